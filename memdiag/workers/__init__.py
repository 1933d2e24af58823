"""The parent/worker contract: environment names, report directories, merging the
workers' reports, and running a worker's script as ``python script.py`` would."""
