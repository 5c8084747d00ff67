"""Services: the plugin's own I/O that is neither Orthanc nor a store — background threads (the
audit writer and exporter), sockets (syslog over TLS), host probes (``/proc``, subprocesses) and
the components that compose stores with file reads (the sealed-tag catalogue, the scrub runner).

The pure core never imports this package; the shell wires it to Orthanc.
"""
