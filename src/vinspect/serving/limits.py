"""Defaults of the service, in a module light enough for the CLI to import when it builds its parser.

Every limit is documented in the README's "Security" section; change them there too.
"""

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
# 16.8 Mpx: an 8k-pixel line camera's 2,048-line frame, or a 4096 x 4096 area camera (was 40 Mpx)
DEFAULT_MAX_PIXELS = 16_777_216
# memory that all image decodes in flight may take together (each decode's cost is computed from the header:
# width x height x bytes a pixel, see vinspect.data.decode.decode_cost); one decode over it is refused (413)
DEFAULT_DECODE_MEMORY = 512 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 30.0  # a request not answered by then gets 503 with Retry-After
DEFAULT_HEADER_TIMEOUT_S = 10.0  # a connection that has not sent its complete request headers by then is closed
DEFAULT_LIMIT_CONCURRENCY = 256  # open connections + requests in flight; beyond, uvicorn answers 503
# degenerate images get no verdict (400 degenerate_image)
MIN_SIDE = 16  # pixels, the shorter side
MAX_ASPECT = 20.0  # longer side / shorter side
MIN_RANGE = 2  # grey levels: an image whose pixels all lie within this of each other is blank
DEFAULT_DB_FILE = "inspections.sqlite3"
