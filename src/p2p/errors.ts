// One error class per condition of the p2p layer, each with a stable `name`.

import { NoSourceError } from '../blockstack/errors.js'

export class PskFormatError extends Error {
  override name = 'PskFormatError'
}

export class AdvertDecodeError extends Error {
  override name = 'AdvertDecodeError'
}

export class WireDecodeError extends Error {
  override name = 'WireDecodeError'
}

/** A peer could not serve some blocks (not present, unknown image, or busy). */
export class BlocksUnavailableError extends Error {
  override name = 'BlocksUnavailableError'
  constructor (message: string, readonly blockIndexes: readonly number[] = []) { super(message) }
}

/**
 * No peer could be asked for a block within the peer source's wait for one (it waited for adverts, parents,
 * connections). A NoSourceError: the cache asks again at once, without a backoff of its own.
 */
export class NoPeerForBlockError extends NoSourceError {
  override name = 'NoPeerForBlockError'
}

/** A block job was placed on as many peers as it may be (maxAssignments) and none served it. */
export class PeerTriesExhaustedError extends Error {
  override name = 'PeerTriesExhaustedError'
}

/** A request to a peer took longer than its timeout. */
export class PeerTimeoutError extends Error {
  override name = 'PeerTimeoutError'
}

/** A request was cancelled because every block it asked for arrived from another peer (a hedge won). */
export class RequestSupersededError extends Error {
  override name = 'RequestSupersededError'
}

/** The link (persistent stream) to a peer closed or failed. */
export class PeerLinkClosedError extends Error {
  override name = 'PeerLinkClosedError'
}

/** The peer is over its limits (queued requests or bytes) and refused the request. */
export class PeerBusyError extends Error {
  override name = 'PeerBusyError'
}

export class ManifestUnavailableError extends Error {
  override name = 'ManifestUnavailableError'
}

export class ServiceStoppedError extends Error {
  override name = 'ServiceStoppedError'
}

export class ImageNotAddedError extends Error {
  override name = 'ImageNotAddedError'
}
