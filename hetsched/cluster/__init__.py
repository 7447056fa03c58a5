"""hetsched on a Dask cluster: a hetsched host on every Dask worker (``host``), the runtime's
executor over them (``executor``) and the network model between them (``network``).

Imported only when a runtime is given a cluster, so Dask stays an optional dependency
(``pip install hetsched[dask]``)."""
