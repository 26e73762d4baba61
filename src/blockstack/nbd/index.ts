// Public surface of the NBD server.

export { createNbdServer, DEFAULT_UNIX_SOCKET_MODE } from './server.js'
export type { NbdServer, NbdServerInit, ListenOptions } from './server.js'
export { openFileExport, staticExportProvider, ShortFileReadError, DEFAULT_SYNC_READ_MAX_BYTES } from './file-export.js'
export type { FileExport, FileExportOptions } from './file-export.js'
export { BufferPool, type BufferReleasingExport } from './buffer-pool.js'
export type { NbdLogger, NbdLogFields } from './logger.js'
export { stderrLogger, silentLogger } from './logger.js'
export * from './errors.js'
export {
  DEFAULT_MAX_CONNECTIONS, DEFAULT_NEGOTIATION_TIMEOUT_MS, DEFAULT_MAX_OPTION_BYTES, DEFAULT_MAX_PAYLOAD_BYTES,
  DEFAULT_MAX_IN_FLIGHT_REQUESTS, DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_PREFERRED_BLOCK_BYTES,
  DEFAULT_HALF_CLOSE_GRACE_MS
} from './constants.js'
