"""The pipeline layer: the stage table and the graph built from it, the tasks that wire the science
to the store (one function per task, on one block), and each worker's integrator.

Imports the store and the science below it; nothing here starts a cluster or talks to a user."""
