"""What a script needs around the library: error exits, logging and seeding (`recipe`), one run per output folder
(`run_lock`) and CPU threads per stage (`threads`)."""
