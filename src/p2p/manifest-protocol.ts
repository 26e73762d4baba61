// /vmthunder/manifest/2: fetch an image's signed manifest from a peer. One short stream per fetch (rare).
//   request:  imageId (utf-8, one length-prefixed message)
//   response: status u8 (0 found, 1 unknown image) | the encoded manifest, raw-deflated
// /vmthunder/manifest/1 is the same with the manifest not deflated; served still, and asked for when a peer
// does not speak 2 (agents of an earlier version).
// Why deflate: a manifest is 32 bytes per block (512 KiB for a 1 GiB image at 64 KiB blocks), and every zero
// block has the same hash, so a sparse image's manifest shrinks several times (the test image: 512 -> ~150
// KiB). At the start of a wave every host fetches it from the origin at once: at 100 Mb/s eight raw copies
// alone took the origin's link ~340 ms, inside each host's first instance.create. The server deflates a
// manifest once and keeps the result.
// The receiver inflates it within MAX_MANIFEST_BYTES, decodes it, checks its signature and that its origin is
// trusted (acceptManifest): a peer can only refuse to help, never make this agent accept a manifest it
// should not.

import '../polyfill.js'
import { deflateRawSync, inflateRawSync, constants as zlibConstants } from 'node:zlib'
import { lpStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { MAX_MANIFEST_BYTES, acceptManifest, validateImageId, type Manifest } from '../blockstack/manifest.js'
import { ManifestDecodeError } from '../blockstack/errors.js'
import type { Logger } from '../blockstack/cache.js'
import type { P2PNode } from './node.js'
import { ManifestUnavailableError } from './errors.js'

export const MANIFEST_PROTOCOL = '/vmthunder/manifest/2'
export const MANIFEST_PROTOCOL_V1 = '/vmthunder/manifest/1'
export const MANIFEST_FETCH_TIMEOUT_MS = 30_000
const STATUS_FOUND = 0
const STATUS_UNKNOWN = 1
/** Deflated replies: a bomb may not make the reader hold more than a manifest can be. */
const MAX_DEFLATED_REPLY_BYTES = MAX_MANIFEST_BYTES + 1

/** Each manifest's reply, deflated once (fastest level: the zero-block hashes are what shrinks). */
const deflatedReplies = new WeakMap<Manifest, Uint8Array>()

function deflatedReply (manifest: Manifest): Uint8Array {
  let reply = deflatedReplies.get(manifest)
  if (reply === undefined) {
    const body = deflateRawSync(manifest.encoded, { level: zlibConstants.Z_BEST_SPEED })
    reply = concatStatus(body)
    deflatedReplies.set(manifest, reply)
  }
  return reply
}

export async function serveManifestStream (stream: Stream, connection: Connection, lookup: (imageId: string) => Manifest | undefined,
  logger: Logger, options: { deflate: boolean }): Promise<void> {
  const lp = lpStream(stream, { maxDataLength: 256 })
  const signal = AbortSignal.timeout(MANIFEST_FETCH_TIMEOUT_MS)
  try {
    const imageId = Buffer.from((await lp.read({ signal })).subarray()).toString('utf8')
    let manifest: Manifest | undefined
    try { manifest = lookup(validateImageId(imageId)) } catch { manifest = undefined }
    if (manifest === undefined) await lp.write(Uint8Array.of(STATUS_UNKNOWN), { signal })
    else await lp.write(options.deflate ? deflatedReply(manifest) : concatStatus(manifest.encoded), { signal })
    await stream.close({ signal })
  } catch (err) {
    logger.warn('manifest request failed', { peer: connection.remotePeer.toString(), error: (err as Error).message })
    stream.abort(err as Error)
  }
}

function concatStatus (encoded: Uint8Array): Uint8Array {
  const out = new Uint8Array(encoded.byteLength + 1)
  out[0] = STATUS_FOUND
  out.set(encoded, 1)
  return out
}

/** Fetches, verifies and trust-checks the manifest of `imageId` from one peer. */
export async function fetchManifestFrom (node: P2PNode, peer: PeerId, imageId: string, trustedKeys: readonly Uint8Array[],
  signal: AbortSignal): Promise<Manifest> {
  const stream = await node.dialProtocol(peer, [MANIFEST_PROTOCOL, MANIFEST_PROTOCOL_V1], { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_MANIFEST_BYTES + 1, maxBufferSize: MAX_MANIFEST_BYTES + 64 })
    await lp.write(new TextEncoder().encode(imageId), { signal })
    const reply = (await lp.read({ signal })).subarray()
    // The reply is whole: its close need not hold the caller (one more turn of a loaded host's event loop).
    stream.close({ signal }).catch(() => {})
    if (reply[0] !== STATUS_FOUND) throw new ManifestUnavailableError(`${peer.toString()} has no manifest for ${imageId}`)
    const encoded = stream.protocol === MANIFEST_PROTOCOL_V1 ? reply.subarray(1) : inflateReply(reply.subarray(1), peer)
    const manifest = acceptManifest(encoded, trustedKeys)
    if (manifest.imageId !== imageId) throw new ManifestUnavailableError(`${peer.toString()} sent the manifest of ${manifest.imageId} for ${imageId}`)
    return manifest
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

function inflateReply (body: Uint8Array, peer: PeerId): Uint8Array {
  try {
    return inflateRawSync(body, { maxOutputLength: MAX_DEFLATED_REPLY_BYTES })
  } catch (err) {
    throw new ManifestDecodeError(`${peer.toString()} sent a manifest that does not inflate: ${(err as Error).message}`)
  }
}
