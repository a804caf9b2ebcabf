//! Which gradients share a bucket: PyTorch DDP's assignment by size.
//!
//! Parameters are taken in the order the backward produces their gradients (the reverse of the
//! forward), each gradient an f32 slice of a flat bucket buffer. A bucket closes once it holds
//! at least its cap in bytes (so a bucket may overshoot by its last parameter, and a parameter
//! bigger than the cap gets a bucket of its own); the first bucket has a smaller cap, so the
//! first all-reduce starts early in the backward (DDP's `bucket_cap_mb` = 25 MiB and 1 MiB for the
//! first).

use std::ops::Range;

use crate::error::{Error, Result};

/// Bytes per gradient element in a bucket (f32 gradients, Megatron's `main_grad`).
pub const GRAD_BYTES: usize = 4;

/// The bucket caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketCaps {
    /// Cap of every bucket but the first, in bytes (PyTorch's default 25 MiB).
    pub bucket_cap_bytes: usize,
    /// Cap of the first bucket, in bytes (PyTorch's default 1 MiB).
    pub first_bucket_cap_bytes: usize,
}

impl Default for BucketCaps {
    fn default() -> Self {
        BucketCaps {
            bucket_cap_bytes: 25 << 20,
            first_bucket_cap_bytes: 1 << 20,
        }
    }
}

impl BucketCaps {
    /// Both caps `bytes` (no smaller first bucket).
    pub fn uniform(bytes: usize) -> Self {
        BucketCaps {
            bucket_cap_bytes: bytes,
            first_bucket_cap_bytes: bytes,
        }
    }
}

/// One bucket: a run of consecutive parameters (in backward order) and where each one's gradient
/// sits in the bucket's flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// The parameters (indices in backward order).
    pub params: Range<usize>,
    /// `offsets[j]` is the element offset of parameter `params.start + j`.
    pub offsets: Vec<usize>,
    /// Elements in the bucket.
    pub numel: usize,
}

/// The assignment of every parameter to a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPlan {
    /// The buckets, in the order they fill (and are reduced).
    pub buckets: Vec<Bucket>,
    /// `location[i] = (bucket, offset)` of parameter `i`.
    pub location: Vec<(usize, usize)>,
}

impl BucketPlan {
    /// Assigns parameters of `numels` elements (in backward order) to buckets.
    ///
    /// Errors: [`Error::InvalidArgument`] for no parameters, an empty parameter or a zero cap.
    pub fn new(numels: &[usize], caps: BucketCaps) -> Result<BucketPlan> {
        const OP: &str = "BucketPlan::new";
        if numels.is_empty() {
            return Err(Error::invalid(OP, "numels", "no parameters"));
        }
        if let Some(i) = numels.iter().position(|&n| n == 0) {
            return Err(Error::invalid(OP, format!("parameter {i}"), "is empty"));
        }
        if caps.bucket_cap_bytes == 0 || caps.first_bucket_cap_bytes == 0 {
            return Err(Error::invalid(OP, "caps", "a bucket cap of 0 bytes"));
        }
        let mut buckets = Vec::new();
        let mut location = Vec::with_capacity(numels.len());
        let (mut start, mut offsets, mut numel) = (0, Vec::new(), 0usize);
        for (i, &n) in numels.iter().enumerate() {
            location.push((buckets.len(), numel));
            offsets.push(numel);
            numel = numel
                .checked_add(n)
                .ok_or_else(|| Error::invalid(OP, "numels", "total overflows"))?;
            let cap = if buckets.is_empty() {
                caps.first_bucket_cap_bytes
            } else {
                caps.bucket_cap_bytes
            };
            if numel.saturating_mul(GRAD_BYTES) >= cap || i + 1 == numels.len() {
                buckets.push(Bucket {
                    params: start..i + 1,
                    offsets: std::mem::take(&mut offsets),
                    numel,
                });
                start = i + 1;
                numel = 0;
            }
        }
        Ok(BucketPlan { buckets, location })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_in_order_and_close_at_the_cap() {
        // Caps in elements x 4 bytes: first 8 elements, then 16.
        let caps = BucketCaps {
            bucket_cap_bytes: 16 * 4,
            first_bucket_cap_bytes: 8 * 4,
        };
        let p = BucketPlan::new(&[3, 3, 3, 20, 5, 5, 5, 1], caps).expect("plan");
        let ranges: Vec<_> = p.buckets.iter().map(|b| b.params.clone()).collect();
        assert_eq!(ranges, vec![0..3, 3..4, 4..8]);
        assert_eq!(p.buckets[0].offsets, vec![0, 3, 6]);
        assert_eq!(p.buckets[0].numel, 9);
        assert_eq!(p.buckets[1].numel, 20);
        assert_eq!(p.buckets[2].numel, 16);
        assert_eq!(p.location[5], (2, 5));
        // A cap smaller than any parameter: one bucket each; a huge cap: one bucket.
        assert_eq!(
            BucketPlan::new(&[4, 4, 4], BucketCaps::uniform(1))
                .expect("plan")
                .buckets
                .len(),
            3
        );
        assert_eq!(
            BucketPlan::new(&[4, 4, 4], BucketCaps::default())
                .expect("plan")
                .buckets
                .len(),
            1
        );
        assert!(BucketPlan::new(&[], BucketCaps::default()).is_err());
        assert!(BucketPlan::new(&[1, 0], BucketCaps::default()).is_err());
        assert!(BucketPlan::new(&[1], BucketCaps::uniform(0)).is_err());
    }
}
