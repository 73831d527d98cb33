//! Writes the kernelspec.
