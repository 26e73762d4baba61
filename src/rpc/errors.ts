// Stable JSON-RPC error codes. Scripts match on `code`; `data.name` carries the error class name.
// -32xxx are JSON-RPC 2.0's own; 1xxx are vmthunderd's. Never renumber: add.

export const RpcErrorCode = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  ImageNotFound: 1001,
  ImageExists: 1002,
  ImageInUse: 1003,
  ImageFile: 1004,
  ImagePathNotAllowed: 1005,
  InstanceNotFound: 1011,
  InstanceExists: 1012,
  InstanceInUse: 1013,
  InvalidName: 1020,
  SnapshotTool: 1030,
  UntrustedOrigin: 1040,
  ManifestUnavailable: 1041,
  BlockFetch: 1050,
  ProfileUnavailable: 1060,
  RequestTooLarge: 1090,
  TooManyConnections: 1091,
  ShuttingDown: 1092
} as const

/** Error class name -> code, for errors thrown by the layers below the RPC socket. */
export const ERROR_CODES_BY_NAME: Record<string, number> = {
  ImageNotFoundError: RpcErrorCode.ImageNotFound,
  ImageExistsError: RpcErrorCode.ImageExists,
  ImageInUseError: RpcErrorCode.ImageInUse,
  ImageFileError: RpcErrorCode.ImageFile,
  ImagePathNotAllowedError: RpcErrorCode.ImagePathNotAllowed,
  InstanceNotFoundError: RpcErrorCode.InstanceNotFound,
  InstanceExistsError: RpcErrorCode.InstanceExists,
  InstanceInUseError: RpcErrorCode.InstanceInUse,
  InvalidNameError: RpcErrorCode.InvalidName,
  InvalidImageIdError: RpcErrorCode.InvalidName,
  SnapshotToolError: RpcErrorCode.SnapshotTool,
  UntrustedOriginError: RpcErrorCode.UntrustedOrigin,
  ManifestSignatureError: RpcErrorCode.UntrustedOrigin,
  ManifestDecodeError: RpcErrorCode.UntrustedOrigin,
  ManifestUnavailableError: RpcErrorCode.ManifestUnavailable,
  BlockVerificationError: RpcErrorCode.BlockFetch,
  FetchTimeoutError: RpcErrorCode.BlockFetch,
  InvalidParamsError: RpcErrorCode.InvalidParams,
  ProfileDecodeError: RpcErrorCode.InvalidParams,
  ProfileMismatchError: RpcErrorCode.InvalidParams,
  ProfileUnavailableError: RpcErrorCode.ProfileUnavailable,
  ShuttingDownError: RpcErrorCode.ShuttingDown
}

export class InvalidParamsError extends Error {
  override name = 'InvalidParamsError'
}

export class ShuttingDownError extends Error {
  override name = 'ShuttingDownError'
}

/** Thrown by the client when the daemon answers with an error. */
export class RpcError extends Error {
  override name = 'RpcError'
  constructor (message: string, readonly code: number, readonly data?: unknown) { super(message) }
}
