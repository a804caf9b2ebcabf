//! One source copied to several destinations.

use crate::stream::{copy_streaming, fence, Stores};

/// Bytes per chunk of [`copy_to`]: small enough that the chunk read from the source is still
/// in the L1 cache when it is written to the second and later destinations.
const CHUNK: usize = 16 << 10;

/// Copies `bytes` bytes from `src` to every destination, one cache-sized chunk at a time, so the
/// source is read from memory once however many destinations there are. A destination equal to
/// `src` is skipped (a broadcast's root keeps its buffer). `stores` says whether the copies
/// bypass the cache ([`Stores::for_total`] chooses); streaming ones are fenced before return.
///
/// # Safety
/// `src` must be readable for `bytes` bytes and not written by anyone during the call; every
/// other destination writable for `bytes` bytes, not accessed by anyone else during the call,
/// and disjoint from the source and from the other destinations.
pub unsafe fn copy_to(src: *const u8, dsts: &[*mut u8], bytes: usize, stores: Stores) {
    let mut done = 0;
    while done < bytes {
        let c = CHUNK.min(bytes - done);
        for &d in dsts.iter().filter(|&&d| d.cast_const() != src) {
            // SAFETY (both arms): per this function's contract: in range, and disjoint.
            match stores {
                Stores::Cached => unsafe {
                    std::ptr::copy_nonoverlapping(src.add(done), d.add(done), c)
                },
                Stores::Streaming => unsafe { copy_streaming(src.add(done), d.add(done), c) },
            }
        }
        done += c;
    }
    if stores == Stores::Streaming {
        fence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_destination_gets_the_source_and_nothing_else_is_touched() {
        for bytes in [0, 1, 7, CHUNK - 1, CHUNK, 3 * CHUNK + 5] {
            let src: Vec<u8> = (0..bytes).map(|i| (i * 7 + 3) as u8).collect();
            for stores in [Stores::Cached, Stores::Streaming] {
                let mut outs = vec![vec![0xAAu8; bytes + 2]; 3];
                let dsts: Vec<*mut u8> = outs.iter_mut().map(|o| o[1..].as_mut_ptr()).collect();
                // SAFETY: each destination has bytes + 1 bytes from its pointer; all disjoint.
                unsafe { copy_to(src.as_ptr(), &dsts, bytes, stores) };
                for o in &outs {
                    assert_eq!(&o[1..=bytes], &src[..], "{bytes} bytes {stores:?}");
                    assert_eq!(
                        (o[0], o[bytes + 1]),
                        (0xAA, 0xAA),
                        "{bytes} {stores:?}: outside"
                    );
                }
            }
        }
    }

    #[test]
    fn the_source_as_a_destination_is_left_alone() {
        let mut buf: Vec<u8> = (0..100).collect();
        let mut other = vec![0u8; 100];
        let p = buf.as_mut_ptr();
        // SAFETY: `other` is disjoint from `buf`; `buf` itself is skipped as a destination.
        unsafe { copy_to(p, &[p, other.as_mut_ptr()], 100, Stores::Streaming) };
        assert_eq!(other, buf);
        assert_eq!(buf, (0..100).collect::<Vec<u8>>());
    }
}
