//! Method ids: the 32-bit numbers that route a request to its handler.

use std::fmt;

/// Names a method on the wire. Derived from the method's name by a stable hash (32-bit FNV-1a),
/// so client and server agree without a registry; a [`Router`](crate::Router) refuses two
/// names that hash to the same id.
///
/// # Examples
///
/// ```
/// use flumen::MethodId;
///
/// const ECHO: MethodId = MethodId::from_name("echo");
/// assert_eq!(ECHO, MethodId::from("echo"));
/// assert_eq!(ECHO.as_u32(), 0xd49d_d484);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodId(u32);

impl MethodId {
    /// The id of the method called `name`.
    pub const fn from_name(name: &str) -> Self {
        let bytes = name.as_bytes();
        let mut hash: u32 = 0x811c_9dc5;
        let mut i = 0;
        while i < bytes.len() {
            hash ^= bytes[i] as u32;
            hash = hash.wrapping_mul(0x0100_0193);
            i += 1;
        }
        Self(hash)
    }

    /// An id given as a number (for peers that number their methods themselves).
    pub const fn from_u32(id: u32) -> Self {
        Self(id)
    }

    /// The number on the wire.
    pub const fn as_u32(self) -> u32 {
        self.0
    }
}

impl From<&str> for MethodId {
    fn from(name: &str) -> Self {
        Self::from_name(name)
    }
}

impl From<u32> for MethodId {
    fn from(id: u32) -> Self {
        Self(id)
    }
}

impl fmt::Debug for MethodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MethodId({:#010x})", self.0)
    }
}
