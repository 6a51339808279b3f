"""The Ray Data engine (``--engine ray``, :func:`pipeline.ray.answer`).

- :mod:`.shares`: the cluster-wide limits split between the sender actors (pure);
- :mod:`.udf`: the class UDF of ``map_batches`` that runs docpipe's row sender;
- :mod:`.board`: the actor that carries a stop to every sender actor;
- :mod:`.dataset`: manifest rows in, outcome batches out (the ``map_batches`` call);
- :mod:`.run`: ``docpipe run --engine ray``: the driver that journals what comes back.

Importing this package does not import Ray; its modules do.
"""
