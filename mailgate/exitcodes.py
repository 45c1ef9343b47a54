"""sysexits.h codes for `mailgate deliver`: the MTA retries on 75 and bounces on the others."""

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_CONFIG = 78
