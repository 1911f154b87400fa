"""scale-ingestor: scale measurements from ZeroMQ into PostgreSQL, exactly once.

The path of an event, top to bottom: :mod:`ingestor.front` receives frames and
decodes them with :mod:`ingestor.protocol`, puts records into the shared-memory
:mod:`ingestor.ring`; :mod:`ingestor.writer` processes COPY them
(:mod:`ingestor.copy_payload`) into the tables of :mod:`ingestor.schema`.
:mod:`ingestor.supervisor` owns the ring and the children.
"""

__version__ = "0.1.0"
