// /vmthunder/profile/1: fetch an image's boot profile (src/prefetch, binary form) from a peer. One short
// stream per fetch; fetches are rare (a profile changes once per boot somewhere in the cluster).
//   request:  imageId (utf-8, one length-prefixed message), or 'live/' + imageId for the live profile
//   response: status u8 (0 found, 1 unknown image or no profile, 2 busy) | the encoded profile
// Bounded both ways: the server answers one request per peer per PROFILE_SERVE_INTERVAL_MS (else 'busy'; live
// requests have their own, shorter interval) and keeps state for at most MAX_TRACKED_PEERS peers; the client
// reads at most `maxBytes` (1 MiB) within a timeout. The client does not trust what it gets: the caller decodes
// it with bounds and checks it fits the manifest (PrefetchManager.adoptPeerProfile). A profile is a
// performance hint only.
//
// Live profiles (swarm read-ahead within one boot wave): an agent that is booting a VM of the image (its advert
// says `booting`) serves the first-touch order recorded so far, a profile that grows as the boot goes on. A
// peer with no learned profile fetches it again and again while the wave lasts (createLiveProfileFetcher:
// one fetch per image at a time, at most one start per LIVE_FETCH_INTERVAL_MS per image, a global cap per
// minute), and its read-ahead follows it: the hosts ahead in the wave show the others what they will read.
// A '/' cannot occur in an image id, so an older server answers a live request 'unknown'.

import '../polyfill.js'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
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
/** A peer gets one live profile per this interval (the live order changes quickly during a boot). */
export const LIVE_PROFILE_SERVE_INTERVAL_MS = 200
export const LIVE_PREFIX = 'live/'
const MAX_TRACKED_PEERS = 1024
const STATUS_FOUND = 0
const STATUS_UNKNOWN = 1
const STATUS_BUSY = 2

export class ProfileUnavailableError extends Error {
  override name = 'ProfileUnavailableError'
}

/** The peer answered 'busy': asked again sooner than its rate limit allows. */
export class ProfileBusyError extends Error {
  override name = 'ProfileBusyError'
}

export class ProfileFetchError extends Error {
  override name = 'ProfileFetchError'
}

export interface ProfileServerInit {
  /** The encoded profile of an image, if this agent has one; with `live`, the boot being recorded now. */
  lookup: (imageId: string, live: boolean) => Uint8Array | undefined
  logger: Logger
  nowMs?: () => number
}

/** The server side, with its per-peer rate limit; `handle` serves one stream. */
export function createProfileServer (init: ProfileServerInit): { handle: (stream: Stream, connection: Connection) => Promise<void>, served: () => number } {
  const now = init.nowMs ?? Date.now
  const lastServed = new Map<string, number>()
  const lastServedLive = new Map<string, number>()
  let served = 0
  const handle = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    const lp = lpStream(stream, { maxDataLength: 256 })
    const signal = AbortSignal.timeout(PROFILE_FETCH_TIMEOUT_MS)
    try {
      const request = Buffer.from((await lp.read({ signal })).subarray()).toString('utf8')
      const live = request.startsWith(LIVE_PREFIX)
      const imageId = live ? request.slice(LIVE_PREFIX.length) : request
      const nowMs = now()
      const times = live ? lastServedLive : lastServed
      const last = times.get(peer)
      let reply: Uint8Array
      if (last !== undefined && nowMs - last < (live ? LIVE_PROFILE_SERVE_INTERVAL_MS : PROFILE_SERVE_INTERVAL_MS)) {
        reply = Uint8Array.of(STATUS_BUSY)
      } else {
        times.delete(peer)
        times.set(peer, nowMs)
        if (times.size > MAX_TRACKED_PEERS) times.delete(times.keys().next().value as string)
        let bytes: Uint8Array | undefined
        try { bytes = init.lookup(validateImageId(imageId), live) } catch { bytes = undefined }
        if (bytes === undefined || bytes.byteLength === 0 || bytes.byteLength > MAX_PROFILE_WIRE_BYTES) {
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

/** Fetches the encoded profile of `imageId` (with `live`, the live one) from one peer: at most `maxBytes`, within the signal's time. */
export async function fetchProfileFrom (node: P2PNode, peer: PeerId, imageId: string,
  options: { signal: AbortSignal, maxBytes?: number, live?: boolean }): Promise<Uint8Array> {
  const maxBytes = Math.min(options.maxBytes ?? MAX_PROFILE_WIRE_BYTES, MAX_PROFILE_WIRE_BYTES)
  const { signal } = options
  const stream = await node.dialProtocol(peer, PROFILE_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: maxBytes + 1, maxBufferSize: maxBytes + 64 })
    await lp.write(new TextEncoder().encode(options.live === true ? LIVE_PREFIX + imageId : imageId), { signal })
    const reply = (await lp.read({ signal })).subarray()
    await stream.close({ signal }).catch(() => {})
    if (reply.byteLength === 0) throw new ProfileFetchError(`${peer.toString()} sent an empty profile reply`)
    if (reply[0] === STATUS_BUSY) throw new ProfileBusyError(`${peer.toString()} is busy (profile requests too frequent)`)
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
  /** VMs of the image this agent is booting now (advertised as `booting`). */
  booting?: (imageId: string) => number
  /** The first-touch order of the boot this agent is recording now (binary profile form), served to peers. */
  live?: (imageId: string) => Uint8Array | undefined
  /**
   * A live profile fetched from a booting peer (decode with bounds, check it fits; throw otherwise). Resolves
   * true when read-ahead now follows it. Never stored or advertised: a boot in progress is not a boot learned.
   */
  adoptLive?: (imageId: string, bytes: Uint8Array) => boolean
  /** False when live profiles of the image are of no use here (a learned profile exists): none is fetched. */
  wantsLive?: (imageId: string) => boolean
}

/**
 * Live profile fetches: at most one start per image per interval, and this many per minute in all. Each fetch
 * opens a stream and sends the whole profile so far: at 250 ms, stream set-up on both sides and the profile
 * codec took about 5 % of every agent's CPU in the 8-host wave (--cpu-prof), for read-ahead that looks 1-8 MiB
 * ahead, which a second-old profile still covers.
 */
export const LIVE_FETCH_INTERVAL_MS = 1000
export const MAX_LIVE_FETCHES_PER_MINUTE = 150
/** A peer whose live profile could not be had is not asked again for this long (bad data: much longer). */
const LIVE_FAILED_EXCLUDE_MS = 2000
const LIVE_BAD_EXCLUDE_MS = 10 * 60_000
const MAX_LIVE_IMAGES = 256

export interface LiveProfileFetcherInit {
  node: () => P2PNode
  provider: ProfileProvider
  logger: Logger
  /** Aborts every fetch (the service stops). */
  signal: AbortSignal
  nowMs?: () => number
}

export interface LiveProfileFetcher {
  /** Fetches a live profile of the image from one of `bootingPeers` (in turn), if the bounds allow one now. */
  maybeFetch: (imageId: string, bootingPeers: readonly string[]) => void
  /** Live profiles fetched (for status and tests). */
  fetched: () => number
}

/** The client side of swarm read-ahead: bounded, rate limited, one fetch per image at a time. */
export function createLiveProfileFetcher (init: LiveProfileFetcherInit): LiveProfileFetcher {
  const now = init.nowMs ?? Date.now
  const images = new Map<string, { fetching: boolean, lastStartMs: number, turn: number, excluded: Map<string, number> }>()
  const starts: number[] = []
  let fetched = 0
  const maybeFetch = (imageId: string, bootingPeers: readonly string[]): void => {
    const { provider } = init
    if (init.signal.aborted || provider.adoptLive === undefined || bootingPeers.length === 0) return
    if (provider.wantsLive?.(imageId) === false) return
    let state = images.get(imageId)
    if (state === undefined) {
      if (images.size >= MAX_LIVE_IMAGES) images.delete(images.keys().next().value as string)
      state = { fetching: false, lastStartMs: -Infinity, turn: 0, excluded: new Map() }
      images.set(imageId, state)
    }
    const nowMs = now()
    if (state.fetching || nowMs - state.lastStartMs < LIVE_FETCH_INTERVAL_MS) return
    while (starts.length > 0 && starts[0] <= nowMs - 60_000) starts.shift()
    if (starts.length >= MAX_LIVE_FETCHES_PER_MINUTE) return
    for (const [peer, until] of state.excluded) if (until <= nowMs) state.excluded.delete(peer)
    const eligible = bootingPeers.filter(peer => !state.excluded.has(peer))
    if (eligible.length === 0) return
    const peer = eligible[state.turn++ % eligible.length]
    state.fetching = true
    state.lastStartMs = nowMs
    starts.push(nowMs)
    const s = state
    void (async () => {
      try {
        const signal = AbortSignal.any([init.signal, AbortSignal.timeout(PROFILE_FETCH_TIMEOUT_MS)])
        const bytes = await fetchProfileFrom(init.node(), peerIdFromString(peer), imageId, { signal, live: true })
        fetched++
        provider.adoptLive?.(imageId, bytes)
      } catch (err) {
        if (init.signal.aborted) return
        const name = (err as Error).name
        const bad = name === 'ProfileDecodeError' || name === 'ProfileMismatchError' || name === 'InvalidDataLengthError' || name === 'ProfileFetchError'
        // 'busy' is the server's rate limit: ask again at the next turn, not later.
        if (name !== 'ProfileBusyError') s.excluded.set(peer, now() + (bad ? LIVE_BAD_EXCLUDE_MS : LIVE_FAILED_EXCLUDE_MS))
        if (bad) init.logger.warn('live profile refused', { image: imageId, peer, error: (err as Error).message })
      } finally {
        s.fetching = false
      }
    })()
  }
  return { maybeFetch, fetched: () => fetched }
}
