"""The display layer: the run's messages (console logger), the summary picture and the live picture.

Reads stores; never writes into a run's store."""
