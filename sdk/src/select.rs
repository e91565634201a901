//! Which files of a multi-file content to download (`--files 1,3-5`, `--files '*.mkv'`, a
//! magnet's `so=`): indices count from 1 in the content's own file order; anything else is a
//! glob (`*` any run of characters, `?` one character) matched against each file's path and
//! against its last component.

use thiserror::Error;

/// Most ranges or characters a selection may hold (it comes from a command line or a link).
const MAX_SPEC: usize = 4096;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("file selection is empty")]
    Empty,
    #[error("file selection is longer than {MAX_SPEC} characters")]
    TooLong,
    #[error("file selection {0:?}: files count from 1")]
    Zero(String),
    #[error("file selection {0:?} is not a number or a range")]
    BadRange(String),
    #[error("file {index} is selected, but the content has {count} files")]
    OutOfRange { index: u64, count: usize },
    #[error("no file matches {0:?}")]
    NoMatch(String),
}

/// A parsed selection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSelection {
    /// 1-based inclusive ranges.
    Indices(Vec<(u64, u64)>),
    Glob(String),
}

impl FileSelection {
    /// `1,3-5` (numbers and ranges, counted from 1) or a glob.
    pub fn parse(spec: &str) -> Result<Self, SelectError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(SelectError::Empty);
        }
        if spec.len() > MAX_SPEC {
            return Err(SelectError::TooLong);
        }
        if !spec.chars().all(|c| c.is_ascii_digit() || matches!(c, ',' | '-' | ' ')) {
            return Ok(Self::Glob(spec.to_string()));
        }
        let mut ranges = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let num = |s: &str| s.trim().parse::<u64>().map_err(|_| SelectError::BadRange(part.to_string()));
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(part)?, num(part)?),
            };
            if a == 0 || b == 0 {
                return Err(SelectError::Zero(part.to_string()));
            }
            if b < a {
                return Err(SelectError::BadRange(part.to_string()));
            }
            ranges.push((a, b));
        }
        if ranges.is_empty() {
            return Err(SelectError::Empty);
        }
        Ok(Self::Indices(ranges))
    }

    /// BEP 53 `so` indices (counted from 0, as in the link).
    pub fn from_magnet_so(indices: &[u32]) -> Option<Self> {
        (!indices.is_empty()).then(|| Self::Indices(indices.iter().map(|&i| (i as u64 + 1, i as u64 + 1)).collect()))
    }

    /// Which of `paths` (the content's files in order) are wanted; an index past the end or a
    /// glob that matches nothing is an error.
    pub fn wanted<S: AsRef<str>>(&self, paths: &[S]) -> Result<Vec<bool>, SelectError> {
        let n = paths.len();
        match self {
            Self::Indices(ranges) => {
                let mut out = vec![false; n];
                for &(a, b) in ranges {
                    if b > n as u64 {
                        return Err(SelectError::OutOfRange { index: b, count: n });
                    }
                    for i in a..=b {
                        out[(i - 1) as usize] = true;
                    }
                }
                Ok(out)
            }
            Self::Glob(g) => {
                let out: Vec<bool> = paths
                    .iter()
                    .map(|p| {
                        let p = p.as_ref();
                        let base = p.rsplit('/').next().unwrap_or(p);
                        glob_match(g.as_bytes(), p.as_bytes()) || glob_match(g.as_bytes(), base.as_bytes())
                    })
                    .collect();
                if !out.iter().any(|w| *w) {
                    return Err(SelectError::NoMatch(g.clone()));
                }
                Ok(out)
            }
        }
    }
}

/// `*` and `?` over bytes, iterative (no backtracking blow-up: one saved star position).
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices() {
        let s = FileSelection::parse("1, 3-5").unwrap();
        assert_eq!(s, FileSelection::Indices(vec![(1, 1), (3, 5)]));
        assert_eq!(s.wanted(&["a", "b", "c", "d", "e", "f"]).unwrap(), [true, false, true, true, true, false]);
        assert_eq!(s.wanted(&["a", "b"]), Err(SelectError::OutOfRange { index: 5, count: 2 }));
        assert!(matches!(FileSelection::parse("0"), Err(SelectError::Zero(_))));
        assert!(matches!(FileSelection::parse("3-1"), Err(SelectError::BadRange(_))));
        assert!(matches!(FileSelection::parse("1--2"), Err(SelectError::BadRange(_))));
        assert_eq!(FileSelection::parse(" , "), Err(SelectError::Empty));
        assert_eq!(
            FileSelection::from_magnet_so(&[0, 2]).unwrap().wanted(&["a", "b", "c"]).unwrap(),
            [true, false, true]
        );
        assert!(FileSelection::from_magnet_so(&[]).is_none());
    }

    #[test]
    fn globs() {
        let s = FileSelection::parse("*.mkv").unwrap();
        assert_eq!(s.wanted(&["d/a.mkv", "d/a.srt", "b.mkv"]).unwrap(), [true, false, true]);
        assert!(matches!(FileSelection::parse("*.iso").unwrap().wanted(&["a"]), Err(SelectError::NoMatch(_))));
        assert!(glob_match(b"d/?.srt", b"d/a.srt"));
        assert!(!glob_match(b"a*b*c", b"aXbY"));
        assert!(glob_match(b"a*b*c", b"aXbYc"));
        let long = "a".repeat(60);
        assert!(!glob_match(b"*a*a*a*a*a*a*a*a*b", long.as_bytes()));
    }
}
