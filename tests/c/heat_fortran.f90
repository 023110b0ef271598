! A heat program on the Fortran `ckpt` module (ckpt's tests).
! usage: heat_fortran DIR ITERS CKPT_EVERY CRASH_AT
! Rows split over the ranks, Jacobi sweeps with halo exchange, restart from the newest
! version committed on every rank, a checkpoint every CKPT_EVERY iterations, and the last
! rank stops dead after the checkpoint of iteration CRASH_AT (if > 0).
program heat_fortran
  use, intrinsic :: iso_c_binding
  use mpi
  use ckpt
  implicit none
  integer, parameter :: rows = 64, cols = 256
  real(c_double), target :: u(cols, 0:rows + 1), unew(cols, 0:rows + 1)
  integer(c_int64_t), target :: iter(1)
  integer(c_int64_t) :: version, iters, every, crash_at
  integer :: ierr, rank, nranks, up, down, i, j, status(MPI_STATUS_SIZE)
  character(len=512) :: dir, arg
  real(c_double) :: l, r, total, mine

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call MPI_Comm_size(MPI_COMM_WORLD, nranks, ierr)
  call get_command_argument(1, dir)
  call get_command_argument(2, arg); read (arg, *) iters
  call get_command_argument(3, arg); read (arg, *) every
  call get_command_argument(4, arg); read (arg, *) crash_at

  call ckpt_init(MPI_COMM_WORLD, dir, "heat", ierr)
  call check("ckpt_init")
  u = 0.0_c_double
  if (rank == 0) u(:, 1) = 100.0_c_double
  iter = 0
  call ckpt_protect(0, iter, int(c_sizeof(iter), c_size_t), ierr)
  call check("ckpt_protect")
  call ckpt_protect(1, u, int(size(u), c_size_t) * c_sizeof(u(1, 1)), ierr)
  call check("ckpt_protect")
  call ckpt_restart_test(version, ierr)
  call check("ckpt_restart_test")
  if (version > 0) then
    call ckpt_restart(version, ierr)
    call check("ckpt_restart")
    if (rank == 0) print '(a,i0,a,i0)', 'restarted from version ', version, ' at iteration ', iter(1)
  else if (rank == 0) then
    print '(a)', 'fresh start'
  end if
  up = merge(rank - 1, MPI_PROC_NULL, rank > 0)
  down = merge(rank + 1, MPI_PROC_NULL, rank < nranks - 1)
  do while (iter(1) < iters)
    call MPI_Sendrecv(u(:, 1), cols, MPI_DOUBLE_PRECISION, up, 0, u(:, rows + 1), cols, &
                      MPI_DOUBLE_PRECISION, down, 0, MPI_COMM_WORLD, status, ierr)
    call MPI_Sendrecv(u(:, rows), cols, MPI_DOUBLE_PRECISION, down, 1, u(:, 0), cols, &
                      MPI_DOUBLE_PRECISION, up, 1, MPI_COMM_WORLD, status, ierr)
    do i = 1, rows
      do j = 1, cols
        l = 0.0_c_double; r = 0.0_c_double
        if (j > 1) l = u(j - 1, i)
        if (j < cols) r = u(j + 1, i)
        unew(j, i) = 0.25_c_double * (u(j, i - 1) + u(j, i + 1) + l + r)
      end do
    end do
    if (rank == 0) unew(:, 1) = 100.0_c_double
    u(:, 1:rows) = unew(:, 1:rows)
    iter(1) = iter(1) + 1
    if (mod(iter(1), every) == 0) then
      call ckpt_checkpoint(version, ierr)
      call check("ckpt_checkpoint")
      if (iter(1) == crash_at .and. rank == nranks - 1) then
        write (0, '(a,i0)') 'crashing after checkpoint version ', version
        call exit_now()
      end if
    end if
  end do
  mine = 0.0_c_double
  do i = 1, rows
    do j = 1, cols
      mine = mine + u(j, i) * real(mod((i * cols + j - 1), 7) + 1, c_double)
    end do
  end do
  call MPI_Reduce(mine, total, 1, MPI_DOUBLE_PRECISION, MPI_SUM, 0, MPI_COMM_WORLD, ierr)
  if (rank == 0) print '(a,es25.17)', 'checksum ', total
  call ckpt_finalize(ierr)
  call MPI_Finalize(ierr)

contains

  subroutine check(what)
    character(len=*), intent(in) :: what
    if (ierr /= CKPT_SUCCESS) then
      write (0, '(a,a,a,i0,a,a)') 'ckpt call ', what, ' failed: ', ierr, ': ', ckpt_error_message()
      call MPI_Abort(MPI_COMM_WORLD, 3, ierr)
    end if
  end subroutine

  subroutine exit_now()
    interface
      subroutine c_exit(code) bind(C, name="_exit")
        import :: c_int
        integer(c_int), value :: code
      end subroutine
    end interface
    call c_exit(9_c_int)
  end subroutine
end program heat_fortran
