# kms_flags.m4 - compiler and linker flag probes for smime-kms.
#
# KMS_TRY_CFLAG(FLAG, VARIABLE, [PROLOGUE])
#   Append FLAG to VARIABLE when the C compiler compiles a small program
#   (PROLOGUE, then an empty main) with it and with -Werror, so a flag the
#   compiler only warns about (unknown, or unusable as set up, such as
#   _FORTIFY_SOURCE without optimisation) counts as refused.
# KMS_TRY_LDFLAG(FLAG, VARIABLE, [EXTRA_CFLAGS])
#   Append FLAG to VARIABLE when a program links with it (and with
#   EXTRA_CFLAGS at compile time, e.g. -fPIE for -pie).
# Results are cached per flag (kms_cv_cflag_*, kms_cv_ldflag_*).

AC_DEFUN([KMS_TRY_CFLAG], [
  AS_VAR_PUSHDEF([kms_cv], [kms_cv_cflag_$1])
  AC_CACHE_CHECK([whether $CC accepts $1], [kms_cv], [
    kms_save_CFLAGS=$CFLAGS
    CFLAGS="$CFLAGS -Werror $1"
    AC_COMPILE_IFELSE([AC_LANG_PROGRAM([$3], [])],
      [AS_VAR_SET([kms_cv], [yes])], [AS_VAR_SET([kms_cv], [no])])
    CFLAGS=$kms_save_CFLAGS])
  AS_VAR_IF([kms_cv], [yes], [$2="$$2 $1"])
  AS_VAR_POPDEF([kms_cv])
])

AC_DEFUN([KMS_TRY_LDFLAG], [
  AS_VAR_PUSHDEF([kms_cv], [kms_cv_ldflag_$1])
  AC_CACHE_CHECK([whether the linker accepts $1], [kms_cv], [
    kms_save_CFLAGS=$CFLAGS
    kms_save_LDFLAGS=$LDFLAGS
    CFLAGS="$CFLAGS -Werror $3"
    LDFLAGS="$LDFLAGS $1"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([], [])],
      [AS_VAR_SET([kms_cv], [yes])], [AS_VAR_SET([kms_cv], [no])])
    CFLAGS=$kms_save_CFLAGS
    LDFLAGS=$kms_save_LDFLAGS])
  AS_VAR_IF([kms_cv], [yes], [$2="$$2 $1"])
  AS_VAR_POPDEF([kms_cv])
])
