//! Embeds CPython and runs lanes. All FFI outside `native` lives here.
