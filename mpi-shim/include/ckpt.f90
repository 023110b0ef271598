! ckpt.f90: the Fortran module `ckpt`, over ckpt's native C API (ckpt.h) with ISO_C_BINDING.
!
!   use ckpt
!   call ckpt_init(MPI_COMM_WORLD, "/scratch/job", "heat", ierr)
!   call ckpt_protect(1, u, int(size(u), c_size_t) * c_sizeof(u(1, 1)), ierr)
!   call ckpt_restart_test(version, ierr)
!   if (version > 0) call ckpt_restart(version, ierr)
!   ...
!   call ckpt_checkpoint(version, ierr)
!   call ckpt_finalize(ierr)
!
! ckpt_protect takes a contiguous array of any type, kind and rank (or an array element,
! by sequence association) and its size in bytes. ierr is CKPT_SUCCESS (0) or a negative
! CKPT_ERR_* code; ckpt_error_message(ierr) describes the last failure. Versions are
! integer(c_int64_t). Compile this file with your MPI Fortran compiler (mpifort -c ckpt.f90)
! and link with -lckpt.
module ckpt
  use, intrinsic :: iso_c_binding
  implicit none
  private
  public :: ckpt_init, ckpt_init_single, ckpt_protect, ckpt_unprotect, ckpt_checkpoint, &
            ckpt_checkpoint_async, ckpt_wait, ckpt_restart_test, ckpt_restart, ckpt_should_checkpoint, ckpt_should_exit, &
            ckpt_finalize, ckpt_error_message
  integer, parameter, public :: CKPT_SUCCESS = 0, CKPT_ERR_ARG = -1, CKPT_ERR_STATE = -2, &
       CKPT_ERR_IO = -3, CKPT_ERR_CORRUPT = -4, CKPT_ERR_NOT_FOUND = -5, CKPT_ERR_REGION = -6, &
       CKPT_ERR_RANKS = -7, CKPT_ERR_CONFIG = -8, CKPT_ERR_INTERNAL = -9

  interface
    integer(c_int) function c_init_fortran(comm, dir, name, cfg) bind(C, name="ckpt_init_fortran")
      import :: c_int, c_char, c_ptr
      integer(c_int), value :: comm
      character(kind=c_char), dimension(*) :: dir, name
      type(c_ptr), value :: cfg
    end function
    integer(c_int) function c_init_single(dir, name, cfg) bind(C, name="ckpt_init_single")
      import :: c_int, c_char, c_ptr
      character(kind=c_char), dimension(*) :: dir, name
      type(c_ptr), value :: cfg
    end function
    integer(c_int) function c_protect(id, ptr, bytes) bind(C, name="ckpt_protect")
      import :: c_int, c_size_t
      integer(c_int), value :: id
      type(*), dimension(*) :: ptr
      integer(c_size_t), value :: bytes
    end function
    integer(c_int) function c_unprotect(id) bind(C, name="ckpt_unprotect")
      import :: c_int
      integer(c_int), value :: id
    end function
    integer(c_int) function c_checkpoint(version) bind(C, name="ckpt_checkpoint")
      import :: c_int, c_int64_t
      integer(c_int64_t) :: version
    end function
    integer(c_int) function c_checkpoint_async(version) bind(C, name="ckpt_checkpoint_async")
      import :: c_int, c_int64_t
      integer(c_int64_t) :: version
    end function
    integer(c_int) function c_wait(version) bind(C, name="ckpt_wait")
      import :: c_int, c_int64_t
      integer(c_int64_t) :: version
    end function
    integer(c_int) function c_restart_test(version) bind(C, name="ckpt_restart_test")
      import :: c_int, c_int64_t
      integer(c_int64_t) :: version
    end function
    integer(c_int) function c_restart(version) bind(C, name="ckpt_restart")
      import :: c_int, c_int64_t
      integer(c_int64_t), value :: version
    end function
    integer(c_int) function c_should_checkpoint() bind(C, name="ckpt_should_checkpoint")
      import :: c_int
    end function
    integer(c_int) function c_should_exit() bind(C, name="ckpt_should_exit")
      import :: c_int
    end function
    integer(c_int) function c_finalize() bind(C, name="ckpt_finalize")
      import :: c_int
    end function
    type(c_ptr) function c_last_error() bind(C, name="ckpt_last_error")
      import :: c_ptr
    end function
    integer(c_size_t) function c_strlen(s) bind(C, name="strlen")
      import :: c_size_t, c_ptr
      type(c_ptr), value :: s
    end function
  end interface

contains

  ! Starts an MPI session over communicator `comm` (an integer handle, as from mpif.h or
  ! `MPI_COMM_WORLD` of `use mpi`); chain `name` in job store `dir`. Collective.
  subroutine ckpt_init(comm, dir, name, ierr)
    integer, intent(in) :: comm
    character(len=*), intent(in) :: dir, name
    integer, intent(out) :: ierr
    ierr = c_init_fortran(int(comm, c_int), trim(dir) // c_null_char, trim(name) // c_null_char, &
                          c_null_ptr)
  end subroutine

  ! Starts a session for one process, without MPI.
  subroutine ckpt_init_single(dir, name, ierr)
    character(len=*), intent(in) :: dir, name
    integer, intent(out) :: ierr
    ierr = c_init_single(trim(dir) // c_null_char, trim(name) // c_null_char, c_null_ptr)
  end subroutine

  ! Protects `bytes` bytes of the contiguous array `buf` (any type, kind and rank) as region
  ! `id` (>= 0). `buf` must have the TARGET or SAVE attribute or otherwise stay in place, and
  ! stay allocated until ckpt_unprotect(id) or ckpt_finalize.
  subroutine ckpt_protect(id, buf, bytes, ierr)
    integer, intent(in) :: id
    type(*), dimension(*) :: buf
    integer(c_size_t), intent(in) :: bytes
    integer, intent(out) :: ierr
    ierr = c_protect(int(id, c_int), buf, bytes)
  end subroutine

  subroutine ckpt_unprotect(id, ierr)
    integer, intent(in) :: id
    integer, intent(out) :: ierr
    ierr = c_unprotect(int(id, c_int))
  end subroutine

  ! Writes a checkpoint; `version` receives its number. Collective.
  subroutine ckpt_checkpoint(version, ierr)
    integer(c_int64_t), intent(out) :: version
    integer, intent(out) :: ierr
    version = 0
    ierr = c_checkpoint(version)
  end subroutine

  ! Starts a checkpoint and returns once its snapshot is taken; the protected arrays may be
  ! written at once. The previous asynchronous version commits here. Collective.
  subroutine ckpt_checkpoint_async(version, ierr)
    integer(c_int64_t), intent(out) :: version
    integer, intent(out) :: ierr
    version = 0
    ierr = c_checkpoint_async(version)
  end subroutine

  ! Waits until the asynchronous checkpoint in flight is committed on every rank; `version`
  ! receives it (0 if none was in flight). Collective.
  subroutine ckpt_wait(version, ierr)
    integer(c_int64_t), intent(out) :: version
    integer, intent(out) :: ierr
    version = 0
    ierr = c_wait(version)
  end subroutine

  ! `version` receives the newest version committed on every rank, 0 if none. Collective.
  subroutine ckpt_restart_test(version, ierr)
    integer(c_int64_t), intent(out) :: version
    integer, intent(out) :: ierr
    version = 0
    ierr = c_restart_test(version)
  end subroutine

  ! Restores `version` (0: the newest) into the protected arrays. Collective.
  subroutine ckpt_restart(version, ierr)
    integer(c_int64_t), intent(in) :: version
    integer, intent(out) :: ierr
    ierr = c_restart(version)
  end subroutine

  ! .true. if a checkpoint was requested (by a signal, on any rank). Collective.
  logical function ckpt_should_checkpoint()
    ckpt_should_checkpoint = c_should_checkpoint() == 1
  end function

  ! .true. if the job should stop (a halt request was honoured at the last checkpoint).
  logical function ckpt_should_exit()
    ckpt_should_exit = c_should_exit() == 1
  end function

  subroutine ckpt_finalize(ierr)
    integer, intent(out) :: ierr
    ierr = c_finalize()
  end subroutine

  ! The message of the last failure on this thread.
  function ckpt_error_message() result(msg)
    character(len=:), allocatable :: msg
    type(c_ptr) :: p
    character(kind=c_char), pointer :: chars(:)
    integer :: n, i
    p = c_last_error()
    n = int(c_strlen(p))
    call c_f_pointer(p, chars, [n])
    allocate(character(len=n) :: msg)
    do i = 1, n
      msg(i:i) = chars(i)
    end do
  end function
end module ckpt
