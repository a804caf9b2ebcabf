//! The MPI communicator (feature `mpi`): CPU ranks as processes, over OpenMPI.
