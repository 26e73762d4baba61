// /vmthunder/profile/1: fetch an image's boot profile (src/prefetch, binary form) from a peer. One short
// stream per fetch; fetches are rare (a profile changes once per boot somewhere in the cluster).
//   request:  imageId (utf-8, one length-prefixed message)
//   response: status u8 (0 found, 1 unknown image or no profile, 2 busy) | the encoded profile
// Bounded both ways: the server answers one request per peer per PROFILE_SERVE_INTERVAL_MS (else 'busy') and
// keeps state for at most MAX_TRACKED_PEERS peers; the client reads at most `maxBytes` (1 MiB) within a
// timeout. The client does not trust what it gets: the caller decodes it with bounds and checks it fits the
// manifest (PrefetchManager.adoptPeerProfile). A profile is a performance hint only.

import '../polyfill.js'
import { lpStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { validateImageId } from '../blockstack/manifest.js'
import type { Logger } from '../blockstack/cache.js'
import type { P2PNode } from './node.js'

export const PROFILE_PROTOCOL = '/vmthunder/profile/1'
export const PROFILE_FETCH_TIMEOUT_MS = 10_000
/** The largest profile this protocol moves (the profile decoder's own bound). */
export const MAX_PROFILE_WIRE_BYTES = 1024 * 1024
/** A peer gets one answer per this interval; more often it is told 'busy'. */
export const PROFILE_SERVE_INTERVAL_MS = 1000
const MAX_TRACKED_PEERS = 1024
const STATUS_FOUND = 0
const STATUS_UNKNOWN = 1
const STATUS_BUSY = 2

export class ProfileUnavailableError extends Error {
  override name = 'ProfileUnavailableError'
}

export class ProfileFetchError extends Error {
  override name = 'ProfileFetchError'
}

export interface ProfileServerInit {
  /** The encoded profile of an image, if this agent has one. */
  lookup: (imageId: string) => Uint8Array | undefined
  logger: Logger
  nowMs?: () => number
}

/** The server side, with its per-peer rate limit; `handle` serves one stream. */
export function createProfileServer (init: ProfileServerInit): { handle: (stream: Stream, connection: Connection) => Promise<void>, served: () => number } {
  const now = init.nowMs ?? Date.now
  const lastServed = new Map<string, number>()
  let served = 0
  const handle = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    const lp = lpStream(stream, { maxDataLength: 256 })
    const signal = AbortSignal.timeout(PROFILE_FETCH_TIMEOUT_MS)
    try {
      const imageId = Buffer.from((await lp.read({ signal })).subarray()).toString('utf8')
      const nowMs = now()
      const last = lastServed.get(peer)
      let reply: Uint8Array
      if (last !== undefined && nowMs - last < PROFILE_SERVE_INTERVAL_MS) {
        reply = Uint8Array.of(STATUS_BUSY)
      } else {
        lastServed.delete(peer)
        lastServed.set(peer, nowMs)
        if (lastServed.size > MAX_TRACKED_PEERS) lastServed.delete(lastServed.keys().next().value as string)
        let bytes: Uint8Array | undefined
        try { bytes = init.lookup(validateImageId(imageId)) } catch { bytes = undefined }
        if (bytes === undefined || bytes.byteLength > MAX_PROFILE_WIRE_BYTES) {
          reply = Uint8Array.of(STATUS_UNKNOWN)
        } else {
          reply = new Uint8Array(bytes.byteLength + 1)
          reply[0] = STATUS_FOUND
          reply.set(bytes, 1)
          served++
        }
      }
      await lp.write(reply, { signal })
      await stream.close({ signal })
    } catch (err) {
      init.logger.warn('profile request failed', { peer, error: (err as Error).message })
      stream.abort(err as Error)
    }
  }
  return { handle, served: () => served }
}

/** Fetches the encoded profile of `imageId` from one peer: at most `maxBytes`, within the signal's time. */
export async function fetchProfileFrom (node: P2PNode, peer: PeerId, imageId: string,
  options: { signal: AbortSignal, maxBytes?: number }): Promise<Uint8Array> {
  const maxBytes = Math.min(options.maxBytes ?? MAX_PROFILE_WIRE_BYTES, MAX_PROFILE_WIRE_BYTES)
  const { signal } = options
  const stream = await node.dialProtocol(peer, PROFILE_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: maxBytes + 1, maxBufferSize: maxBytes + 64 })
    await lp.write(new TextEncoder().encode(imageId), { signal })
    const reply = (await lp.read({ signal })).subarray()
    await stream.close({ signal }).catch(() => {})
    if (reply.byteLength === 0) throw new ProfileFetchError(`${peer.toString()} sent an empty profile reply`)
    if (reply[0] === STATUS_BUSY) throw new ProfileUnavailableError(`${peer.toString()} is busy (profile requests too frequent)`)
    if (reply[0] !== STATUS_FOUND) throw new ProfileUnavailableError(`${peer.toString()} has no profile of ${imageId}`)
    return reply.slice(1)
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

/** What the p2p service needs of the agent's boot profiles (the daemon's PrefetchManager provides it). */
export interface ProfileProvider {
  /** This agent's profile of an image (binary form): advertised and served. */
  local: (imageId: string) => { version: string, boots: number, bytes: Uint8Array } | undefined
  /**
   * A profile fetched from a peer. Must decode it with bounds and check it fits the image's manifest (throw
   * otherwise); resolves true when it replaced this agent's profile.
   */
  adopt: (imageId: string, bytes: Uint8Array) => Promise<boolean>
}
