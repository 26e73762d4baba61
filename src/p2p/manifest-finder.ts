// Finding an image's signed manifest: ask the peers that advertise it (shallowest first, bounded); while none
// is known yet, ask the connected peers directly, one at a time (any agent that holds the manifest serves it, and
// it is checked against the trusted keys whoever sends it), then wait for adverts. Registers interest in the
// image's topic meanwhile.
//
// Why ask before any advert: a new subscriber hears of the image only when a holder's next advert reaches it
// (the holder answers a subscription after at least its minimum advert interval, and its gossip stream to the
// subscriber may not be open yet), so instance.create of a new image waited 0.2-0.9 s for gossip in the 8-host
// testbed while the origin was a connected peer all along.

import { peerIdFromString } from '@libp2p/peer-id'
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
  /** The image's state, subscribing to its topic (interest only) if new. */
  ensureState: (imageId: string) => ImageState
  /** Interest only ended: unsubscribe and forget the image. */
  dropInterest: (state: ImageState) => void
  /** A manifest was found: from a peer that advertised it, or from a connected peer asked before any advert. */
  onFound?: (how: 'advertised' | 'direct') => void
}

export type FetchManifestFn = (imageId: string, options: { signal: AbortSignal }) => Promise<Manifest>

export const createManifestFinder = (init: ManifestFinderInit) => (components: ServiceComponents): FetchManifestFn => {
  const { logger, images, peers, events } = components
  return async (imageId, options) => {
    const existing = images.get(imageId)
    if (existing?.manifest !== undefined) return existing.manifest
    const state = init.ensureState(imageId)
    const signal = AbortSignal.any([options.signal, components.stopSignal])
    const tried = new Set<string>()
    const askedDirect = new Set<string>()
    let lastError: Error | undefined
    try {
      while (tried.size < MAX_MANIFEST_PEERS_TRIED) {
        if (state.manifest !== undefined) return state.manifest
        const candidates = [...state.candidates.entries()]
          .filter(([peer, entry]) => entry.advert.manifestAvailable && !tried.has(peer) && !peers.isBanned(peer))
          .sort(([, a], [, b]) => (a.advert.depth ?? 255) - (b.advert.depth ?? 255))
        if (candidates.length === 0) {
          const direct = askedDirect.size < MAX_DIRECT_ASKS ? [...components.connected].find(peer => !askedDirect.has(peer) && !tried.has(peer) && !peers.isBanned(peer)) : undefined
          if (direct === undefined) {
            await events.next(signal)
            continue
          }
          askedDirect.add(direct)
          try {
            const manifest = await fetchManifestFrom(components.requireNode(), peerIdFromString(direct), imageId, init.trustedKeys,
              AbortSignal.any([signal, AbortSignal.timeout(DIRECT_ASK_TIMEOUT_MS)]))
            init.onFound?.('direct')
            return manifest
          } catch (err) {
            if (signal.aborted) throw err
            // Most often 'no manifest here', which is expected: no warning. A holder is asked again once it advertises.
          }
          continue
        }
        const [peer] = candidates[0]
        tried.add(peer)
        try {
          const manifest = await fetchManifestFrom(components.requireNode(), peerIdFromString(peer), imageId, init.trustedKeys,
            AbortSignal.any([signal, AbortSignal.timeout(MANIFEST_FETCH_TIMEOUT_MS)]))
          if (manifest.rootHex !== state.candidates.get(peer)?.advert.rootHex) logger.warn('manifest root differs from the advert', { image: imageId, peer })
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
