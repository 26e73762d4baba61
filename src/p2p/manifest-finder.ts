// Finding an image's signed manifest: ask the peers that advertise it (shallowest first, bounded); while none
// is known yet, first ask a few connected peers directly, at once (any agent that holds the manifest serves it,
// and it is checked against the trusted keys whoever sends it), then wait for adverts. Registers interest in the
// image's topic meanwhile.
//
// Why ask before any advert: a new subscriber hears of the image only when a holder's next advert reaches it
// (the holder answers a subscription after at least its minimum advert interval, 250 ms, and its gossip stream
// to the subscriber may not be open yet). In the 8-host testbed's wave that wait was 30-310 ms of each host's
// first instance.create, while the origin was a connected peer all along; with think times a host's create is
// nearly all it loses against a central server.

import { setMaxListeners } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import { peerIdOfPublicKey } from '../identity/key.js'
import type { Manifest } from '../blockstack/manifest.js'
import { fetchManifestFrom, MANIFEST_FETCH_TIMEOUT_MS } from './manifest-protocol.js'
import { ManifestUnavailableError } from './errors.js'
import type { ImageState, ServiceComponents } from './components.js'

const MAX_MANIFEST_PEERS_TRIED = 16
/** Connected peers asked directly, before any advert names a holder (each answers at once whether it has it). */
const MAX_DIRECT_ASKS = 4
/** A direct ask that takes longer than this gives way to the adverts (the peer may be busy or far). */
const DIRECT_ASK_TIMEOUT_MS = 2_000

export interface ManifestFinderInit {
  trustedKeys: readonly Uint8Array[]
  /** The trusted origins' peer ids, this agent's own left out (originPeerIds): asked first. */
  origins: ReadonlySet<string>
  /** The image's state, subscribing to its topic (interest only) if new. */
  ensureState: (imageId: string) => ImageState
  /** Interest only ended: unsubscribe and forget the image. */
  dropInterest: (state: ImageState) => void
  /** The manifest fetched ahead (catalog.ts), if it was; awaits such a fetch under way. */
  ahead?: (imageId: string, signal: AbortSignal) => Promise<Manifest | undefined>
  /** A manifest was found: from a peer that advertised it, from a connected peer asked before any advert, or ahead. */
  onFound?: (how: 'advertised' | 'direct' | 'catalog') => void
}

export type FetchManifestFn = (imageId: string, options: { signal: AbortSignal }) => Promise<Manifest>

/**
 * Which connected peers to ask for a manifest before any advert names a holder (at most `max`):
 * - the trusted origins among them: an origin signed the manifests it serves, and an agent's peer id is its
 *   signing key's. In a wave's first second every host subscribes to the new image's topic as it starts its
 *   create, so "subscribed" also names hosts that only want it: in the 8-host testbed 5 of 8 hosts asked 2-4
 *   peers, and their manifests came 236-299 ms after the create began against 183-246 ms for the others;
 * - else those subscribed to the image's topic (its holders are, as is anyone else who wants it);
 * - else any: the others would only answer 'none here'.
 */
export function directAskPeers (connected: readonly string[], subscribed: ReadonlySet<string>, origins: ReadonlySet<string>, max: number): string[] {
  const trusted = connected.filter(peer => origins.has(peer))
  if (trusted.length > 0) return trusted.slice(0, max)
  const holders = connected.filter(peer => subscribed.has(peer))
  return (holders.length > 0 ? holders : connected).slice(0, max)
}

/** The peer ids of the trusted origin keys (raw Ed25519); a malformed key names no peer. */
export function originPeerIds (trustedKeys: readonly Uint8Array[]): Set<string> {
  const ids = new Set<string>()
  for (const key of trustedKeys) {
    try { ids.add(peerIdOfPublicKey(key)) } catch {}
  }
  return ids
}

export const createManifestFinder = (init: ManifestFinderInit) => (components: ServiceComponents): FetchManifestFn => {
  const { logger, images, peers, events } = components
  /**
   * Asks up to MAX_DIRECT_ASKS connected peers at once (directAskPeers); the first valid manifest wins and the
   * other asks are dropped. undefined: none had it in time (a holder is asked again once it advertises).
   */
  const askDirect = async (imageId: string, state: ImageState, asked: Set<string>, signal: AbortSignal): Promise<Manifest | undefined> => {
    const subscribed = new Set(components.node()?.services.pubsub.getSubscribers(state.topic).map(p => p.toString()) ?? [])
    const connected = [...components.connected].filter(peer => !peers.isBanned(peer))
    const peersToAsk = directAskPeers(connected, subscribed, init.origins, MAX_DIRECT_ASKS)
    if (peersToAsk.length === 0) return undefined
    const done = new AbortController()
    const askSignal = AbortSignal.any([signal, done.signal, AbortSignal.timeout(DIRECT_ASK_TIMEOUT_MS)])
    // The asks share it: a few listeners each (dial, stream reads and writes).
    setMaxListeners(MAX_DIRECT_ASKS * 8, askSignal)
    const startMs = performance.now()
    try {
      return await Promise.any(peersToAsk.map(async peer => {
        asked.add(peer)
        const manifest = await fetchManifestFrom(components.requireNode(), peerIdFromString(peer), imageId, init.trustedKeys, askSignal)
        init.onFound?.('direct')
        logger.info('manifest fetched', { image: imageId, peer, direct: true, asked: peersToAsk.length, fetchMs: Math.round(performance.now() - startMs) })
        return manifest
      }))
    } catch {
      // Most often 'no manifest here' from each, which is expected: no warning.
      signal.throwIfAborted()
      return undefined
    } finally {
      done.abort()
    }
  }

  return async (imageId, options) => {
    const existing = images.get(imageId)
    if (existing?.manifest !== undefined) return existing.manifest
    const signal = AbortSignal.any([options.signal, components.stopSignal])
    const ahead = await init.ahead?.(imageId, signal)
    if (ahead !== undefined) {
      init.onFound?.('catalog')
      logger.info('manifest fetched ahead', { image: imageId, root: ahead.rootHex })
      return ahead
    }
    const state = init.ensureState(imageId)
    const tried = new Set<string>()
    const startMs = performance.now()
    const askedDirect = new Set<string>()
    let lastError: Error | undefined
    try {
      while (tried.size < MAX_MANIFEST_PEERS_TRIED) {
        if (state.manifest !== undefined) return state.manifest
        const candidates = [...state.candidates.entries()]
          .filter(([peer, entry]) => entry.advert.manifestAvailable && !tried.has(peer) && !peers.isBanned(peer))
          .sort(([, a], [, b]) => (a.advert.depth ?? 255) - (b.advert.depth ?? 255))
        if (candidates.length === 0) {
          const manifest = askedDirect.size === 0 ? await askDirect(imageId, state, askedDirect, signal) : undefined
          if (manifest !== undefined) return manifest
          await events.next(signal)
          continue
        }
        const [peer] = candidates[0]
        tried.add(peer)
        const askedMs = performance.now()
        try {
          const manifest = await fetchManifestFrom(components.requireNode(), peerIdFromString(peer), imageId, init.trustedKeys,
            AbortSignal.any([signal, AbortSignal.timeout(MANIFEST_FETCH_TIMEOUT_MS)]))
          if (manifest.rootHex !== state.candidates.get(peer)?.advert.rootHex) logger.warn('manifest root differs from the advert', { image: imageId, peer })
          // How long a new image's first instance waited for an advert naming a holder, and for the manifest.
          logger.info('manifest fetched', { image: imageId, peer, waitMs: Math.round(askedMs - startMs), fetchMs: Math.round(performance.now() - askedMs) })
          init.onFound?.('advertised')
          return manifest
        } catch (err) {
          if (signal.aborted) throw err
          lastError = err as Error
          logger.warn('manifest fetch failed', { image: imageId, peer, error: lastError.message })
        }
      }
      throw new ManifestUnavailableError(`no peer gave a valid manifest for ${imageId}${lastError !== undefined ? `: ${lastError.message}` : ''}`)
    } finally {
      // Interest only: stop listening unless the image was added meanwhile.
      if (state.interestOnly && images.get(imageId) === state && state.store === undefined) init.dropInterest(state)
    }
  }
}
