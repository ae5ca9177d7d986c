//! Proof that a checksum database record is in the tree its signed tree head names: the
//! record's leaf hash is combined with the hashes of the subtrees beside its path (read from the
//! database's tiles) up to a root, which must equal the signed one. The tree is the transparent
//! log of the Go checksum database: leaf hash `SHA-256(0x00 || record)`, interior hash
//! `SHA-256(0x01 || left || right)`, a tree of `n` leaves split at the largest power of two
//! below `n`, tiles of height 8 holding 256 hashes of one level.

use sha2::{Digest, Sha256};

/// A hash in the tree.
pub(crate) type Hash = [u8; 32];

/// The height of the database's tiles.
pub(crate) const TILE_HEIGHT: u32 = 8;

/// The leaf hash of a record.
pub(crate) fn record_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two below `n` (`n` at least 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// A complete subtree: `2^level` leaves starting at leaf `index << level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Subtree {
    pub(crate) level: u32,
    pub(crate) index: u64,
}

/// The complete subtrees `[lo, hi)` is made of, left to right.
fn cover(lo: u64, hi: u64, out: &mut Vec<Subtree>) {
    let n = hi - lo;
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        out.push(Subtree {
            level: n.trailing_zeros(),
            index: lo >> n.trailing_zeros(),
        });
        return;
    }
    let k = split(n);
    cover(lo, lo + k, out);
    cover(lo + k, hi, out);
}

/// The subtrees beside the path of leaf `leaf` in the tree of `size` leaves, whose hashes
/// with the leaf's give the root.
pub(crate) fn proof_subtrees(leaf: u64, size: u64) -> Vec<Subtree> {
    fn walk(lo: u64, hi: u64, leaf: u64, out: &mut Vec<Subtree>) {
        if hi - lo <= 1 {
            return;
        }
        let k = split(hi - lo);
        if leaf < lo + k {
            walk(lo, lo + k, leaf, out);
            cover(lo + k, hi, out);
        } else {
            cover(lo, lo + k, out);
            walk(lo + k, hi, leaf, out);
        }
    }
    let mut out = Vec::new();
    walk(0, size, leaf, &mut out);
    out
}

/// The root of the tree of `size` leaves whose leaf `leaf` hashes to `leaf_hash`, the other
/// subtrees' hashes given by `hash_of` (for each of [`proof_subtrees`]).
pub(crate) fn root_with(
    leaf: u64,
    size: u64,
    leaf_hash: Hash,
    hash_of: &dyn Fn(Subtree) -> Option<Hash>,
) -> Option<Hash> {
    fn tree(lo: u64, hi: u64, hash_of: &dyn Fn(Subtree) -> Option<Hash>) -> Option<Hash> {
        let mut parts = Vec::new();
        cover(lo, hi, &mut parts);
        // The cover is left to right; the tree joins it right to left.
        let mut hashes = parts.into_iter().map(hash_of).collect::<Option<Vec<_>>>()?;
        let mut acc = hashes.pop()?;
        while let Some(left) = hashes.pop() {
            acc = node_hash(&left, &acc);
        }
        Some(acc)
    }
    fn walk(
        lo: u64,
        hi: u64,
        leaf: u64,
        leaf_hash: Hash,
        hash_of: &dyn Fn(Subtree) -> Option<Hash>,
    ) -> Option<Hash> {
        if hi - lo == 1 {
            return Some(leaf_hash);
        }
        let k = split(hi - lo);
        if leaf < lo + k {
            let left = walk(lo, lo + k, leaf, leaf_hash, hash_of)?;
            Some(node_hash(&left, &tree(lo + k, hi, hash_of)?))
        } else {
            let right = walk(lo + k, hi, leaf, leaf_hash, hash_of)?;
            Some(node_hash(&tree(lo, lo + k, hash_of)?, &right))
        }
    }
    (leaf < size).then_some(())?;
    walk(0, size, leaf, leaf_hash, hash_of)
}

/// A tile of the database: `width` hashes of level `level * 8`, starting at index
/// `index * 256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tile {
    pub(crate) level: u32,
    pub(crate) index: u64,
    pub(crate) width: u64,
}

impl Tile {
    /// The tile holding `subtree`'s hash (or the hashes it is made of) in a tree of `size`.
    pub(crate) fn of(subtree: Subtree, size: u64) -> (Self, std::ops::Range<usize>) {
        let level = subtree.level / TILE_HEIGHT;
        let below = subtree.level % TILE_HEIGHT;
        let first = subtree.index << below;
        let index = first >> TILE_HEIGHT;
        let at_level = size >> (level * TILE_HEIGHT);
        let width = (at_level - (index << TILE_HEIGHT)).min(1 << TILE_HEIGHT);
        let start = (first & ((1 << TILE_HEIGHT) - 1)) as usize;
        (
            Self {
                level,
                index,
                width,
            },
            start..start + (1usize << below),
        )
    }

    /// Its path under the database root (`tile/8/0/x001/234`, `.p/W` when partial).
    pub(crate) fn path(&self) -> String {
        let mut n = self.index;
        let mut text = format!("{:03}", n % 1000);
        while n >= 1000 {
            n /= 1000;
            text = format!("x{:03}/{text}", n % 1000);
        }
        let partial = if self.width < 1 << TILE_HEIGHT {
            format!(".p/{}", self.width)
        } else {
            String::new()
        };
        format!("tile/{TILE_HEIGHT}/{}/{text}{partial}", self.level)
    }
}

/// The hash of a subtree from the tile hashes `hashes` (those [`Tile::of`] named): hashed
/// up from the tile's level when the subtree is between two tile levels.
pub(crate) fn hash_up(hashes: &[Hash]) -> Option<Hash> {
    let mut row = hashes.to_vec();
    if row.is_empty() || !row.len().is_power_of_two() {
        return None;
    }
    while row.len() > 1 {
        row = row.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    row.pop()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every stored hash of a tree of `leaves`: (level, index) → hash.
    fn stored(leaves: &[Hash]) -> HashMap<(u32, u64), Hash> {
        let mut all = HashMap::new();
        let mut row = leaves.to_vec();
        let mut level = 0;
        while !row.is_empty() {
            for (i, h) in row.iter().enumerate() {
                all.insert((level, i as u64), *h);
            }
            row = row
                .chunks(2)
                .filter(|p| p.len() == 2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            level += 1;
        }
        all
    }

    fn reference_root(leaves: &[Hash]) -> Hash {
        if leaves.len() == 1 {
            return leaves[0];
        }
        let k = split(leaves.len() as u64) as usize;
        node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
    }

    #[test]
    fn records_prove_into_the_root() {
        for size in [1u64, 2, 3, 7, 8, 255, 256, 257, 600, 70_000] {
            let leaves: Vec<Hash> = (0..size)
                .map(|i| record_hash(format!("record {i}\n").as_bytes()))
                .collect();
            let root = reference_root(&leaves);
            let table = stored(&leaves);
            // Subtree hashes come from the tiles, as the database serves them.
            let from_tiles = |s: Subtree| {
                let (tile, range) = Tile::of(s, size);
                let base = tile.level * TILE_HEIGHT;
                let hashes: Vec<Hash> = range
                    .map(|r| table[&(base, (tile.index << TILE_HEIGHT) + r as u64)])
                    .collect();
                assert!(hashes.len() as u64 <= tile.width);
                hash_up(&hashes)
            };
            for leaf in [0, size / 2, size - 1] {
                let got = root_with(leaf, size, leaves[leaf as usize], &from_tiles);
                assert_eq!(got, Some(root), "size {size} leaf {leaf}");
                let forged = root_with(leaf, size, record_hash(b"forged"), &from_tiles);
                assert_ne!(forged, Some(root));
                for s in proof_subtrees(leaf, size) {
                    assert!(from_tiles(s).is_some());
                }
            }
            assert_eq!(root_with(size, size, leaves[0], &from_tiles), None);
        }
    }

    #[test]
    fn tile_paths_are_the_databases() {
        let t = Tile {
            level: 0,
            index: 1_234_067,
            width: 256,
        };
        assert_eq!(t.path(), "tile/8/0/x001/x234/067");
        let p = Tile {
            level: 1,
            index: 5,
            width: 17,
        };
        assert_eq!(p.path(), "tile/8/1/005.p/17");
        let (tile, range) = Tile::of(
            Subtree {
                level: 3,
                index: 40,
            },
            1_000,
        );
        assert_eq!((tile.level, tile.index, tile.width), (0, 1, 256));
        assert_eq!(range, 64..72);
        let (tile, _) = Tile::of(
            Subtree {
                level: 0,
                index: 999,
            },
            1_000,
        );
        assert_eq!(tile.width, 1_000 - 768);
    }
}
