//! Shared buffers (issue 8): named blocks of memory that every lane maps as the same bytes. The
//! registry holds only a weak reference to each block: a block lives while some interpreter
//! holds a view of it (each view's exporter holds an `Arc`), and the last release unmaps it.
//! Knows nothing of Python; `native::shared` exports a block to an interpreter.

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

use crate::sync::LockExt;

/// Why a shared buffer cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    #[error("shared buffer {name:?} exists with size {existing}; open it with shared_buffer({name:?}) or size={existing}")]
    SizeMismatch { name: String, existing: usize },
    #[error("there is no shared buffer {0:?} (it was never made, or every view of it was released): make it with shared_buffer({0:?}, size)")]
    NotFound(String),
    #[error("{0:?} is not a shared buffer name: use 1-128 characters, no control characters")]
    BadName(String),
    #[error("a shared buffer needs a size of at least 1 byte")]
    Empty,
    #[error("cannot map {size} bytes for shared buffer {name:?}: {reason}")]
    NoMemory { name: String, size: usize, reason: String },
}

/// One block: an anonymous mapping of this process (every thread sees it), zeroed and page
/// aligned, given back to the system when the last `Arc` goes.
#[derive(Debug)]
pub struct Block {
    name: String,
    start: NonNull<u8>,
    size: usize,
}

// SAFETY: the block is plain memory owned by this struct; every interpreter may read and write
// it at once, as with `multiprocessing.shared_memory` (the bytes are the user's to coordinate).
unsafe impl Send for Block {}
// SAFETY: as above; the struct itself is never mutated after creation.
unsafe impl Sync for Block {}

impl Block {
    fn map(name: &str, size: usize) -> Result<Block, BufferError> {
        let no_memory = |reason: String| BufferError::NoMemory { name: name.to_owned(), size, reason };
        if isize::try_from(size).is_err() {
            return Err(no_memory("larger than the address space".into()));
        }
        // SAFETY: an anonymous private mapping touches no existing memory; the result is checked.
        let start = unsafe {
            libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        if start == libc::MAP_FAILED {
            return Err(no_memory(std::io::Error::last_os_error().to_string()));
        }
        let start = NonNull::new(start.cast::<u8>()).ok_or_else(|| no_memory("mmap returned null".into()))?;
        Ok(Block { name: name.to_owned(), start, size })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first byte; valid for [`Block::size`] bytes while the block lives.
    pub fn start(&self) -> *mut u8 {
        self.start.as_ptr()
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Block::map` with this start and size, and nothing
        // refers to it any more: every exporter held an `Arc` of this block.
        unsafe { libc::munmap(self.start.as_ptr().cast(), self.size) };
    }
}

/// What `parakernel.shared_buffers()` shows of one block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BufferStats {
    pub name: String,
    pub size: usize,
    /// How many exporters (one per `shared_buffer` call whose views are not all released).
    pub holders: usize,
}

/// Every shared buffer of the process, by name.
#[derive(Debug, Default)]
pub struct Buffers {
    blocks: Mutex<BTreeMap<String, Weak<Block>>>,
}

impl Buffers {
    /// The block `name`: opened when it lives (`size` `None`, or equal to its size), else made
    /// with `size` bytes, zeroed.
    pub fn open(&self, name: &str, size: Option<usize>) -> Result<Arc<Block>, BufferError> {
        if name.is_empty() || name.chars().count() > super::MAX_NAME || name.chars().any(char::is_control) {
            return Err(BufferError::BadName(super::shortened(name)));
        }
        let mut blocks = self.blocks.lock_unpoisoned();
        // Released blocks leave their names behind; forget them here.
        blocks.retain(|_, block| block.strong_count() > 0);
        if let Some(block) = blocks.get(name).and_then(Weak::upgrade) {
            return match size {
                Some(size) if size != block.size => Err(BufferError::SizeMismatch { name: name.to_owned(), existing: block.size }),
                _ => Ok(block),
            };
        }
        let size = size.ok_or_else(|| BufferError::NotFound(name.to_owned()))?;
        if size == 0 {
            return Err(BufferError::Empty);
        }
        let block = Arc::new(Block::map(name, size)?);
        blocks.insert(name.to_owned(), Arc::downgrade(&block));
        Ok(block)
    }

    /// Every living block, by name.
    pub fn stats(&self) -> Vec<BufferStats> {
        let blocks = self.blocks.lock_unpoisoned();
        blocks
            .iter()
            .filter_map(|(name, block)| {
                let holders = block.strong_count();
                let size = block.upgrade()?.size;
                Some(BufferStats { name: name.clone(), size, holders })
            })
            .collect()
    }
}

/// The process's shared buffers.
pub fn buffers() -> &'static Buffers {
    static BUFFERS: std::sync::OnceLock<Buffers> = std::sync::OnceLock::new();
    BUFFERS.get_or_init(Buffers::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_per_name_while_held_and_gone_after_the_last_release() {
        let buffers = Buffers::default();
        let first = buffers.open("grid", Some(4096)).unwrap();
        let second = buffers.open("grid", None).unwrap();
        assert_eq!(first.start(), second.start());
        // SAFETY: both point at the same live block of 4096 bytes.
        unsafe {
            first.start().add(10).write(7);
            assert_eq!(second.start().add(10).read(), 7);
        }
        assert_eq!(buffers.stats(), vec![BufferStats { name: "grid".into(), size: 4096, holders: 2 }]);
        drop(first);
        assert_eq!(buffers.stats()[0].holders, 1);
        drop(second);
        assert!(buffers.stats().is_empty());
        assert_eq!(buffers.open("grid", None).unwrap_err(), BufferError::NotFound("grid".into()));
        // Made again, it is new and zeroed.
        let again = buffers.open("grid", Some(4096)).unwrap();
        // SAFETY: a live block of 4096 bytes.
        assert_eq!(unsafe { again.start().add(10).read() }, 0);
    }

    #[test]
    fn mistakes_say_what_to_do() {
        let buffers = Buffers::default();
        let _held = buffers.open("a", Some(100)).unwrap();
        let mismatch = buffers.open("a", Some(200)).unwrap_err();
        assert_eq!(mismatch, BufferError::SizeMismatch { name: "a".into(), existing: 100 });
        assert!(mismatch.to_string().contains("size=100"), "{mismatch}");
        assert_eq!(buffers.open("b", Some(0)).unwrap_err(), BufferError::Empty);
        assert!(matches!(buffers.open("", Some(1)), Err(BufferError::BadName(_))));
        assert!(matches!(buffers.open("a\nb", Some(1)), Err(BufferError::BadName(_))));
        assert!(matches!(buffers.open("huge", Some(usize::MAX)), Err(BufferError::NoMemory { .. })));
    }
}
