"""modpipe: curate -> pretrain -> adapt -> tune -> publish, one library entry function per stage."""

__version__ = "0.1.0"
