// One error class per condition, each with a stable `name` that tests and the RPC layer can match on.

/** Bytes or JSON that are not a valid profile (garbage, truncated, out of bounds, over a size limit). */
export class ProfileDecodeError extends Error {
  override name = 'ProfileDecodeError'
}

/** A profile that does not belong to this image (other root, block size or block count), or merge inputs that differ. */
export class ProfileMismatchError extends Error {
  override name = 'ProfileMismatchError'
}

/** The prefetcher was stopped (its AbortSignal fired or stop() was called). */
export class PrefetcherStoppedError extends Error {
  override name = 'PrefetcherStoppedError'
}
