//! Row addresses: PostgreSQL's `tid`, as a claim returns it and a settle passes it back.

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// A row version's physical address in its table (`ctid`): the block number and the
/// line pointer within the block. The worker settles an execution at the address its
/// claim returned, which skips a primary key lookup while nothing else has written the
/// row since; the settle checks the worker, lease generation and id on the row it finds
/// there, and looks the row up by id when it has moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tid {
    /// The block (page) number.
    pub block: u32,
    /// The line pointer within the block (1-based).
    pub offset: u16,
}

impl<'a> FromSql<'a> for Tid {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        // The binary form: the block number (4 bytes) and the line pointer (2 bytes),
        // big-endian.
        match *raw {
            [b0, b1, b2, b3, o0, o1] => Ok(Tid {
                block: u32::from_be_bytes([b0, b1, b2, b3]),
                offset: u16::from_be_bytes([o0, o1]),
            }),
            _ => Err(format!("a tid of {} bytes, not 6", raw.len()).into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }
}

impl ToSql for Tid {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.extend_from_slice(&self.block.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TID
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_form_is_block_then_line_pointer_big_endian() {
        let tid = Tid {
            block: 0x0102_0304,
            offset: 0x0506,
        };
        let mut out = BytesMut::new();
        assert!(matches!(tid.to_sql(&Type::TID, &mut out), Ok(IsNull::No)));
        assert_eq!(&out[..], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(Tid::from_sql(&Type::TID, &out).ok(), Some(tid));
        assert!(Tid::from_sql(&Type::TID, &out[..5]).is_err());
        assert!(<Tid as FromSql>::accepts(&Type::TID));
        assert!(!<Tid as FromSql>::accepts(&Type::BYTEA));
    }
}
