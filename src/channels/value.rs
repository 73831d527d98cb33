//! A message on a channel, as owned Rust data: what a Python value becomes in the sending
//! interpreter and is rebuilt from in the receiving one.

/// An `int` of any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Int {
    Small(i64),
    /// Beyond 64 bits: the sign and hexadecimal digits, as `hex(n)` writes them (`-0x1f...`).
    Big(String),
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(Int),
    Float(f64),
    Complex { real: f64, imag: f64 },
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Keys and values in insertion order.
    Dict(Vec<(Value, Value)>),
    /// The bytes of an object with the buffer protocol (one copy), with its `struct` format
    /// and shape, so the receiver's read-only `memoryview` reads as the sender's did.
    Buffer { bytes: Vec<u8>, format: String, shape: Vec<usize> },
    /// Anything else, pickled by the sender. `class` (`module.qualname`) and `lane` name it in
    /// the receiver's error when it cannot be unpickled there.
    Pickled { class: String, lane: String, bytes: Vec<u8> },
}

impl Value {
    /// About how many bytes the value holds (for `%channels`), counting nested values.
    pub fn size(&self) -> usize {
        let own = std::mem::size_of::<Value>();
        own + match self {
            Value::None | Value::Bool(_) | Value::Float(_) | Value::Complex { .. } | Value::Int(Int::Small(_)) => 0,
            Value::Bytes(bytes) => bytes.len(),
            Value::Int(Int::Big(text)) | Value::Str(text) => text.len(),
            Value::Tuple(items) | Value::List(items) => items.iter().map(Value::size).sum(),
            Value::Dict(items) => items.iter().map(|(key, value)| key.size() + value.size()).sum(),
            Value::Buffer { bytes, format, shape } => bytes.len() + format.len() + shape.len() * 8,
            Value::Pickled { class, lane, bytes } => class.len() + lane.len() + bytes.len(),
        }
    }
}
