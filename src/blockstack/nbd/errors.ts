// One error class per condition, each with a stable `name` that tests and logs can match on.

/** The client sent bytes that do not follow the NBD protocol (bad magic, unknown client flags, ...). */
export class NbdProtocolError extends Error {
  override name = 'NbdProtocolError'
}

/** The connection ended before negotiation finished. */
export class NbdNegotiationTruncatedError extends Error {
  override name = 'NbdNegotiationTruncatedError'
}

/** Negotiation took longer than the configured timeout. */
export class NbdNegotiationTimeoutError extends Error {
  override name = 'NbdNegotiationTimeoutError'
}

/** An option's declared length is over the server's bound. */
export class NbdOptionTooLargeError extends Error {
  override name = 'NbdOptionTooLargeError'
  constructor (message: string, readonly optionBytes: number) { super(message) }
}

/** NBD_OPT_EXPORT_NAME named an export that does not exist: the protocol allows no error reply, only a close. */
export class NbdUnknownExportError extends Error {
  override name = 'NbdUnknownExportError'
  constructor (message: string, readonly exportName: string) { super(message) }
}

/** The export's read resolved with the wrong number of bytes. */
export class NbdExportReadLengthError extends Error {
  override name = 'NbdExportReadLengthError'
}

/** listenUnix found a live server on the socket path, or a path that is not a socket. */
export class NbdSocketPathInUseError extends Error {
  override name = 'NbdSocketPathInUseError'
  constructor (message: string, readonly path: string) { super(message) }
}

/** The client's connection closed: the reason its in-flight reads are aborted with. */
export class NbdConnectionClosedError extends Error {
  override name = 'NbdConnectionClosedError'
}

/** The server was closed. */
export class NbdServerClosedError extends Error {
  override name = 'NbdServerClosedError'
}
