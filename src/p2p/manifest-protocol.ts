// /vmthunder/manifest/1: fetch an image's signed manifest from a peer. One short stream per fetch (rare).
//   request:  imageId (utf-8, one length-prefixed message)
//   response: status u8 (0 found, 1 unknown image) | encoded manifest
// The receiver decodes it, checks its signature and that its origin is trusted (acceptManifest): a peer can
// only refuse to help, never make this agent accept a manifest it should not.

import '../polyfill.js'
import { lpStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { MAX_MANIFEST_BYTES, acceptManifest, validateImageId, type Manifest } from '../blockstack/manifest.js'
import type { Logger } from '../blockstack/cache.js'
import type { P2PNode } from './node.js'
import { ManifestUnavailableError } from './errors.js'

export const MANIFEST_PROTOCOL = '/vmthunder/manifest/1'
export const MANIFEST_FETCH_TIMEOUT_MS = 30_000
const STATUS_FOUND = 0
const STATUS_UNKNOWN = 1

export async function serveManifestStream (stream: Stream, connection: Connection, lookup: (imageId: string) => Manifest | undefined,
  logger: Logger): Promise<void> {
  const lp = lpStream(stream, { maxDataLength: 256 })
  const signal = AbortSignal.timeout(MANIFEST_FETCH_TIMEOUT_MS)
  try {
    const imageId = Buffer.from((await lp.read({ signal })).subarray()).toString('utf8')
    let manifest: Manifest | undefined
    try { manifest = lookup(validateImageId(imageId)) } catch { manifest = undefined }
    if (manifest === undefined) await lp.write(Uint8Array.of(STATUS_UNKNOWN), { signal })
    else await lp.write(concatStatus(manifest.encoded), { signal })
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
  const stream = await node.dialProtocol(peer, MANIFEST_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_MANIFEST_BYTES + 1, maxBufferSize: MAX_MANIFEST_BYTES + 64 })
    await lp.write(new TextEncoder().encode(imageId), { signal })
    const reply = (await lp.read({ signal })).subarray()
    await stream.close({ signal }).catch(() => {})
    if (reply[0] !== STATUS_FOUND) throw new ManifestUnavailableError(`${peer.toString()} has no manifest for ${imageId}`)
    const manifest = acceptManifest(reply.subarray(1), trustedKeys)
    if (manifest.imageId !== imageId) throw new ManifestUnavailableError(`${peer.toString()} sent the manifest of ${manifest.imageId} for ${imageId}`)
    return manifest
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}
