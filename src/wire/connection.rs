//! The connection file a Jupyter client writes before it starts the kernel.

use serde::Deserialize;

use super::WireError;

/// Where the five sockets listen, how messages are signed, and (when jupyter_client provisioned
/// them) the CurveZMQ server keys. Debug shows neither the HMAC key nor the Curve secret key.
#[derive(Clone, Deserialize)]
pub struct ConnectionInfo {
    #[serde(default = "default_transport")]
    pub transport: String,
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    #[serde(default)]
    pub key: String,
    #[serde(default = "default_scheme")]
    pub signature_scheme: String,
    #[serde(default)]
    pub kernel_name: String,
    /// Z85 CurveZMQ public key (jupyter_client 8.10's `transport_encryption`).
    #[serde(default)]
    pub curve_publickey: Option<String>,
    /// Z85 CurveZMQ secret key; the kernel serves every socket as a CurveZMQ server with it.
    #[serde(default)]
    pub curve_secretkey: Option<String>,
}

impl std::fmt::Debug for ConnectionInfo {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ConnectionInfo")
            .field("transport", &self.transport)
            .field("ip", &self.ip)
            .field("shell_port", &self.shell_port)
            .field("iopub_port", &self.iopub_port)
            .field("stdin_port", &self.stdin_port)
            .field("control_port", &self.control_port)
            .field("hb_port", &self.hb_port)
            .field("signed", &!self.key.is_empty())
            .field("signature_scheme", &self.signature_scheme)
            .field("kernel_name", &self.kernel_name)
            .field("curve_publickey", &self.curve_publickey)
            .field("curve", &self.curve_secretkey.is_some())
            .finish()
    }
}

fn default_transport() -> String {
    "tcp".to_owned()
}

fn default_scheme() -> String {
    "hmac-sha256".to_owned()
}

impl ConnectionInfo {
    pub fn from_file(path: &std::path::Path) -> Result<Self, WireError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| WireError::ConnectionFileIo { path: shown.clone(), source })?;
        Self::from_json(&text, &shown)
    }

    pub fn from_json(text: &str, path: &str) -> Result<Self, WireError> {
        let info: Self = serde_json::from_str(text)
            .map_err(|source| WireError::ConnectionFileJson { path: path.to_owned(), source })?;
        if !info.key.is_empty() && info.signature_scheme != "hmac-sha256" {
            return Err(WireError::SignatureScheme(info.signature_scheme));
        }
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_jupyter_client_connection_file() {
        let text = r#"{"shell_port": 5001, "iopub_port": 5002, "stdin_port": 5003,
            "control_port": 5004, "hb_port": 5005, "ip": "127.0.0.1", "key": "abc",
            "transport": "tcp", "signature_scheme": "hmac-sha256", "kernel_name": "parakernel"}"#;
        let info = ConnectionInfo::from_json(text, "test").unwrap();
        assert_eq!(info.shell_port, 5001);
        assert_eq!(info.hb_port, 5005);
        assert_eq!(info.key, "abc");
        assert_eq!(info.curve_secretkey, None);
    }

    #[test]
    fn reads_curve_keys_and_never_shows_secrets() {
        let text = r#"{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
            "hb_port": 5, "ip": "127.0.0.1", "key": "hmac-secret", "transport": "ipc",
            "curve_publickey": "public-z85", "curve_secretkey": "curve-secret"}"#;
        let info = ConnectionInfo::from_json(text, "test").unwrap();
        assert_eq!(info.curve_publickey.as_deref(), Some("public-z85"));
        assert_eq!(info.curve_secretkey.as_deref(), Some("curve-secret"));
        let shown = format!("{info:?}");
        assert!(!shown.contains("hmac-secret") && !shown.contains("curve-secret"), "{shown}");
    }

    #[test]
    fn refuses_other_signature_schemes() {
        let text = r#"{"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
            "hb_port": 5, "ip": "127.0.0.1", "key": "abc", "signature_scheme": "hmac-md5"}"#;
        assert!(matches!(
            ConnectionInfo::from_json(text, "test"),
            Err(WireError::SignatureScheme(_))
        ));
    }
}
