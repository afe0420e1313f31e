//! A child process that is killed and reaped when dropped, also when a benchmark or test
//! panics (a leftover daemon would hold ports and pipes).

use std::ops::{Deref, DerefMut};
use std::process::Child;

pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
