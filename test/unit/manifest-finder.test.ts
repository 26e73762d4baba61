// Whom an agent asks for a new image's manifest before any advert names a holder (directAskPeers): the trusted
// origins among its connected peers first, then the image's topic subscribers, then anyone; never more than the
// bound. Pure choice; real keys give the origins' peer ids as the daemon derives them.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { directAskPeers, originPeerIds } from '../../src/p2p/manifest-finder.js'

test('the trusted origins among the connected peers are asked, and only they', () => {
  const connected = ['h1', 'h2', 'origin', 'h3', 'origin2']
  // In a wave's first moments the other hosts are subscribed too: they want the image, they do not hold it.
  const subscribed = new Set(['h1', 'h2', 'origin', 'h3'])
  assert.deepEqual(directAskPeers(connected, subscribed, new Set(['origin', 'origin2', 'not-connected']), 4), ['origin', 'origin2'])
  assert.deepEqual(directAskPeers(connected, subscribed, new Set(['origin', 'origin2']), 1), ['origin'], 'bounded')
})

test('with no trusted origin connected, the subscribers are asked, else any peer, within the bound', () => {
  const connected = ['h1', 'h2', 'h3', 'h4', 'h5', 'h6']
  assert.deepEqual(directAskPeers(connected, new Set(['h2', 'h5', 'gone']), new Set(['origin']), 4), ['h2', 'h5'])
  assert.deepEqual(directAskPeers(connected, new Set(), new Set(), 4), ['h1', 'h2', 'h3', 'h4'])
  assert.deepEqual(directAskPeers([], new Set(['h1']), new Set(['origin']), 4), [])
})

test('an origin is known by its peer id, derived from its trusted signing key; a malformed key names no one', async () => {
  const key = await generateKeyPair('Ed25519')
  const id = peerIdFromPrivateKey(key).toString()
  const origins = originPeerIds([key.publicKey.raw, new Uint8Array(7)])
  assert.deepEqual([...origins], [id])
  assert.deepEqual(directAskPeers(['h1', id], new Set(['h1', id]), origins, 4), [id])
})
