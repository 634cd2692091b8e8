"""The service layer, one module per resource: every read and write the API and the dashboard
make goes through it (projects, checkpoints, datasets, jobs, results, analyses, views,
members, comparison, uploads, dynamics_runs; ingest is the way uploaded files come in).
Import the resource module: `from prunescope.server.services import checkpoints`."""
