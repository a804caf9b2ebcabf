//! The NCCL communicator (feature `nccl`): GPU ranks as processes, bootstrapped from the
//! torchrun-style environment.
