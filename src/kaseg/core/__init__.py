"""The foundation every other part stands on: configs, errors, atomic files, devices and
processes, tensor helpers, statistics. Imports nothing else of kaseg."""
