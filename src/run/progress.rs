//! What a person sees while `parakernel run` works: on a terminal, one live line per running
//! notebook (cell i/n, elapsed, the cell's first line) under an overall bar (indicatif);
//! without one, plain log lines. Both go to the original stderr: fd 2 carries the main lane's
//! cell output while cells run.

use std::collections::HashMap;
use std::io::{self, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// The original stderr as a terminal for indicatif (ANSI cursor movement).
#[derive(Debug)]
struct Terminal;

impl Terminal {
    fn put(text: &str) -> io::Result<()> {
        crate::fatal::original_stderr().write_all(text.as_bytes())
    }
}

impl TermLike for Terminal {
    fn width(&self) -> u16 {
        // SAFETY: TIOCGWINSZ fills a winsize for a terminal descriptor; a failure leaves it zeroed.
        let size = unsafe {
            let mut size: libc::winsize = std::mem::zeroed();
            libc::ioctl(crate::fatal::original_stderr_fd(), libc::TIOCGWINSZ, &raw mut size);
            size
        };
        if size.ws_col == 0 { 100 } else { size.ws_col }
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        if n == 0 { Ok(()) } else { Self::put(&format!("\x1b[{n}A")) }
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        if n == 0 { Ok(()) } else { Self::put(&format!("\x1b[{n}B")) }
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        if n == 0 { Ok(()) } else { Self::put(&format!("\x1b[{n}C")) }
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        if n == 0 { Ok(()) } else { Self::put(&format!("\x1b[{n}D")) }
    }

    fn write_line(&self, line: &str) -> io::Result<()> {
        Self::put(&format!("{line}\n"))
    }

    fn write_str(&self, text: &str) -> io::Result<()> {
        Self::put(text)
    }

    fn clear_line(&self) -> io::Result<()> {
        Self::put("\r\x1b[2K")
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Progress, as lines or as live bars.
pub enum Progress {
    Lines,
    Bars { bars: MultiProgress, notebooks: HashMap<usize, ProgressBar>, overall: ProgressBar },
}

impl Progress {
    /// Bars on a terminal, lines otherwise; `total`: how many notebooks.
    pub fn new(total: usize) -> Progress {
        // SAFETY: isatty only asks about the descriptor.
        let terminal = unsafe { libc::isatty(crate::fatal::original_stderr_fd()) } == 1;
        if !terminal {
            return Progress::Lines;
        }
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::term_like(Box::new(Terminal)));
        let overall = bars.add(ProgressBar::new(total as u64));
        overall.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} notebooks  {elapsed}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        overall.enable_steady_tick(Duration::from_millis(200));
        Progress::Bars { bars, notebooks: HashMap::new(), overall }
    }

    fn line(text: &str) {
        let _ = writeln!(crate::fatal::original_stderr(), "{text}");
    }

    pub fn started(&mut self, n: usize, name: &str, cells: usize) {
        match self {
            Progress::Lines => Self::line(&format!("[{name}] started: {cells} code cells")),
            Progress::Bars { bars, notebooks, overall } => {
                let bar = bars.insert_before(overall, ProgressBar::new(cells as u64));
                let style = ProgressStyle::with_template("{prefix:.bold} cell {pos}/{len} {elapsed:>4} {wide_msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_prefix(name.to_owned());
                bar.enable_steady_tick(Duration::from_millis(200));
                notebooks.insert(n, bar);
            }
        }
    }

    /// Cell `index` (from 0) of `cells` started; `first` is its first line.
    pub fn cell(&mut self, n: usize, name: &str, index: usize, cells: usize, first: &str) {
        match self {
            Progress::Lines => Self::line(&format!("[{name}] cell {}/{cells}: {first}", index + 1)),
            Progress::Bars { notebooks, .. } => {
                if let Some(bar) = notebooks.get(&n) {
                    bar.set_position(index as u64 + 1);
                    bar.set_message(first.to_owned());
                }
            }
        }
    }

    pub fn finished(&mut self, n: usize, text: &str) {
        match self {
            Progress::Lines => Self::line(text),
            Progress::Bars { bars, notebooks, overall } => {
                if let Some(bar) = notebooks.remove(&n) {
                    bar.finish_and_clear();
                    bars.remove(&bar);
                }
                let _ = bars.println(text);
                overall.inc(1);
            }
        }
    }

    pub fn note(&mut self, text: &str) {
        match self {
            Progress::Lines => Self::line(text),
            Progress::Bars { bars, .. } => {
                let _ = bars.println(text);
            }
        }
    }

    /// Clears the bars before the summary.
    pub fn done(&mut self) {
        if let Progress::Bars { bars, overall, .. } = self {
            overall.finish_and_clear();
            let _ = bars.clear();
        }
    }
}
