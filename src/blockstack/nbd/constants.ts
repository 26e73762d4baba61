// NBD wire constants (NetworkBlockDevice/nbd doc/proto.md) and this server's defaults.
// Only what the server speaks: fixed newstyle negotiation, the INFO/GO options and simple replies.

// Handshake magics. 64-bit values are kept as two 32-bit halves so they are written without BigInt.
export const NBDMAGIC_HI = 0x4e42444d // 'NBDM'
export const NBDMAGIC_LO = 0x41474943 // 'AGIC'
export const IHAVEOPT_HI = 0x49484156 // 'IHAV'
export const IHAVEOPT_LO = 0x454f5054 // 'EOPT'
export const OPTION_REPLY_MAGIC_HI = 0x0003e889
export const OPTION_REPLY_MAGIC_LO = 0x045565a9

// Handshake flags (server, 16 bits) and client flags (32 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_NO_ZEROES = 1 << 1
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_C_NO_ZEROES = 1 << 1
export const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES

// Transmission flags (16 bits).
export const NBD_FLAG_HAS_FLAGS = 1 << 0
export const NBD_FLAG_READ_ONLY = 1 << 1
export const NBD_FLAG_SEND_FLUSH = 1 << 2
export const NBD_FLAG_SEND_FUA = 1 << 3
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8
/** Read-only, flush accepted (nothing to flush), safe for several connections: there is no server cache. */
export const READ_ONLY_TRANSMISSION_FLAGS =
  NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN

// Options.
export const NBD_OPT_EXPORT_NAME = 1
export const NBD_OPT_ABORT = 2
export const NBD_OPT_LIST = 3
export const NBD_OPT_STARTTLS = 5
export const NBD_OPT_INFO = 6
export const NBD_OPT_GO = 7
export const NBD_OPT_STRUCTURED_REPLY = 8

// Option reply types; errors have bit 31 set.
export const NBD_REP_ACK = 1
export const NBD_REP_SERVER = 2
export const NBD_REP_INFO = 3
export const NBD_REP_ERR_UNSUP = 0x80000001
export const NBD_REP_ERR_POLICY = 0x80000002
export const NBD_REP_ERR_INVALID = 0x80000003
export const NBD_REP_ERR_UNKNOWN = 0x80000006
export const NBD_REP_ERR_SHUTDOWN = 0x80000007

// NBD_REP_INFO types.
export const NBD_INFO_EXPORT = 0
export const NBD_INFO_NAME = 1
export const NBD_INFO_DESCRIPTION = 2
export const NBD_INFO_BLOCK_SIZE = 3

// Transmission phase.
export const NBD_REQUEST_MAGIC = 0x25609513
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698
export const REQUEST_HEADER_BYTES = 28
export const SIMPLE_REPLY_HEADER_BYTES = 16

export const NBD_CMD_READ = 0
export const NBD_CMD_WRITE = 1
export const NBD_CMD_DISC = 2
export const NBD_CMD_FLUSH = 3
export const NBD_CMD_TRIM = 4
export const NBD_CMD_WRITE_ZEROES = 6

export const NBD_CMD_FLAG_FUA = 1 << 0

// Error values of simple replies.
export const NBD_EPERM = 1
export const NBD_EIO = 5
export const NBD_EINVAL = 22
export const NBD_ESHUTDOWN = 108

/** Zero padding after NBD_OPT_EXPORT_NAME's reply unless the client negotiated NO_ZEROES. */
export const EXPORT_NAME_PADDING_BYTES = 124

// Defaults of this server.
export const DEFAULT_MAX_CONNECTIONS = 256
export const DEFAULT_NEGOTIATION_TIMEOUT_MS = 10_000
/** Options longer than this end the connection: none of ours needs more than a name and a few info codes. */
export const DEFAULT_MAX_OPTION_BYTES = 64 * 1024
/** Options per negotiation; a client looping forever in option haggling is cut off. */
export const DEFAULT_MAX_OPTIONS = 4096
/** Advertised as the block size maximum; larger requests get EINVAL (the spec's default maximum too). */
export const DEFAULT_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
export const BLOCK_SIZE_MIN_BYTES = 1
export const DEFAULT_PREFERRED_BLOCK_BYTES = 4096
/** Requests being served per connection (read issued, reply not yet flushed) before the socket is paused. */
export const DEFAULT_MAX_IN_FLIGHT_REQUESTS = 64
export const DEFAULT_MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
/** After a client's EOF, requests still in flight may finish for this long; then they are aborted. */
export const DEFAULT_HALF_CLOSE_GRACE_MS = 5_000
/** Bytes of unparsed negotiation input buffered before the socket is paused. */
export const HANDSHAKE_BUFFER_MAX_BYTES = 128 * 1024
/** NBD strings (export names, descriptions) must be at most 4096 bytes. */
export const MAX_STRING_BYTES = 4096
