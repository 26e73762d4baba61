// One error class per condition, each with a stable `name` that tests and the RPC layer can match on.

export class ManifestDecodeError extends Error {
  override name = 'ManifestDecodeError'
}

export class ManifestSignatureError extends Error {
  override name = 'ManifestSignatureError'
}

export class UntrustedOriginError extends Error {
  override name = 'UntrustedOriginError'
}

export class InvalidImageIdError extends Error {
  override name = 'InvalidImageIdError'
}

export class BlockNotPresentError extends Error {
  override name = 'BlockNotPresentError'
}

export class BlockVerificationError extends Error {
  override name = 'BlockVerificationError'
  constructor (message: string, readonly blockIndex: number) { super(message) }
}

export class ReadRangeError extends Error {
  override name = 'ReadRangeError'
}

export class CacheClosedError extends Error {
  override name = 'CacheClosedError'
}

export class FetchTimeoutError extends Error {
  override name = 'FetchTimeoutError'
}

/**
 * A source found nobody to supply blocks after waiting (bounded) for a holder to appear. The source owns that
 * wait, so the cache asks again at once rather than backing off on top (see BlockCache.fetchBatch).
 */
export class NoSourceError extends Error {
  override name = 'NoSourceError'
}

export class ImageNotFoundError extends Error {
  override name = 'ImageNotFoundError'
}

export class ImageExistsError extends Error {
  override name = 'ImageExistsError'
}

export class ImageInUseError extends Error {
  override name = 'ImageInUseError'
}

export class ImageFileError extends Error {
  override name = 'ImageFileError'
}

/** An image path that is relative, or outside the directories the config allows. */
export class ImagePathNotAllowedError extends Error {
  override name = 'ImagePathNotAllowedError'
}

export class InstanceNotFoundError extends Error {
  override name = 'InstanceNotFoundError'
}

export class InstanceExistsError extends Error {
  override name = 'InstanceExistsError'
}

/** A VM (qemu) still holds the instance's overlay open: destroying it would pull the disk from under it. */
export class InstanceInUseError extends Error {
  override name = 'InstanceInUseError'
}

export class InvalidNameError extends Error {
  override name = 'InvalidNameError'
}

export class SnapshotToolError extends Error {
  override name = 'SnapshotToolError'
}
