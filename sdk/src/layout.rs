//! Piece geometry of one content: fixed-size pieces, the last one shorter.

use thiserror::Error;

/// Largest piece accepted from any source (a piece is held in memory while it is checked).
pub const MAX_PIECE_LENGTH: u64 = 512 * 1024 * 1024;
/// Most pieces in one layout (bounds the bitfields and picker state taken from the wire).
pub const MAX_PIECES: u64 = 1 << 24;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("piece length {0} is out of range (1 byte to 512 MiB)")]
    PieceLength(u64),
    #[error("{0} pieces is more than the {MAX_PIECES} allowed")]
    TooManyPieces(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub length: u64,
    pub piece_length: u64,
}

impl Layout {
    pub fn new(length: u64, piece_length: u64) -> Result<Self, LayoutError> {
        if piece_length == 0 || piece_length > MAX_PIECE_LENGTH {
            return Err(LayoutError::PieceLength(piece_length));
        }
        let count = length.div_ceil(piece_length);
        if count > MAX_PIECES {
            return Err(LayoutError::TooManyPieces(count));
        }
        Ok(Self { length, piece_length })
    }

    /// A layout for content that has no pieces of its own (plain byte ranges): pieces big
    /// enough that per-request overhead vanishes, small enough to spread over connections and
    /// to bound memory (slots x piece) and the work lost on an interrupted piece.
    /// Fails for content too large to track (more than [`MAX_PIECES`] pieces of 4 MiB).
    pub fn for_byte_ranges(length: u64) -> Result<Self, LayoutError> {
        let target = (length / 64).clamp(256 * 1024, 4 * 1024 * 1024);
        let piece_length = target.next_power_of_two().min(4 * 1024 * 1024);
        Self::new(length, piece_length)
    }

    pub fn piece_count(&self) -> u32 {
        self.length.div_ceil(self.piece_length) as u32
    }

    /// Offset and length of piece `index`.
    pub fn piece(&self, index: u32) -> (u64, u64) {
        let offset = index as u64 * self.piece_length;
        (offset, self.piece_length.min(self.length.saturating_sub(offset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let l = Layout::new(10, 4).unwrap();
        assert_eq!(l.piece_count(), 3);
        assert_eq!(l.piece(0), (0, 4));
        assert_eq!(l.piece(2), (8, 2));
        assert_eq!(Layout::new(0, 4).unwrap().piece_count(), 0);
        assert_eq!(Layout::new(8, 4).unwrap().piece(1), (4, 4));
    }

    #[test]
    fn bounds() {
        assert_eq!(Layout::new(1, 0), Err(LayoutError::PieceLength(0)));
        assert!(Layout::new(1, MAX_PIECE_LENGTH + 1).is_err());
        assert!(Layout::new(u64::MAX, 16 * 1024).is_err());
    }

    #[test]
    fn byte_range_pieces() {
        assert_eq!(Layout::for_byte_ranges(1 << 30).unwrap().piece_length, 4 << 20);
        assert_eq!(Layout::for_byte_ranges(1000).unwrap().piece_length, 256 << 10);
        assert_eq!(Layout::for_byte_ranges(100_000_000_000_000_000), Err(LayoutError::TooManyPieces(23841857911)));
        let l = Layout::for_byte_ranges(64 << 20).unwrap();
        assert_eq!(l.piece_length, 1 << 20);
    }
}
