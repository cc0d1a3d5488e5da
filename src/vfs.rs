//! (being written)
use crate::{Error, Options};
pub(crate) fn register(_o: &Options) -> Result<(), Error> {
    Err(Error::NoDefaultVfs)
}
