// Preheat messages: real Ed25519 signatures; a message is accepted only when well formed, signed by the key
// it names, fresh and small.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { identityFromSeed } from '../../src/identity/key.js'
import { signEd25519 } from '../../src/blockstack/signing.js'
import { decodePreheatMessage, MAX_REQUEST_AGE_MS, MAX_MESSAGE_BYTES } from '../../src/p2p/preheat.js'

const key = identityFromSeed(randomBytes(32))
const other = identityFromSeed(randomBytes(32))
const NOW = 1_800_000_000_000

function envelope (body: Record<string, unknown>, signer = key): Uint8Array {
  const b = JSON.stringify(body)
  return Buffer.from(JSON.stringify({ b, s: Buffer.from(signEd25519(signer, Buffer.from(b))).toString('hex') }))
}

const request = { v: 1, kind: 'request', imageId: 'base', root: 'ab'.repeat(32), signer: key.publicKeyHex, issuedAtMs: NOW }

test('a signed, fresh request decodes', () => {
  assert.deepEqual(decodePreheatMessage(envelope(request), NOW + 1000), request)
})

test('a request signed by another key than the one it names is refused', () => {
  assert.equal(decodePreheatMessage(envelope(request, other), NOW), undefined)
})

test('a tampered body is refused', () => {
  const data = Buffer.from(envelope(request)).toString().replace('base', 'evil')
  assert.equal(decodePreheatMessage(Buffer.from(data), NOW), undefined)
})

test('stale and future requests are refused (replays)', () => {
  assert.equal(decodePreheatMessage(envelope(request), NOW + MAX_REQUEST_AGE_MS + 1), undefined)
  assert.equal(decodePreheatMessage(envelope(request), NOW - MAX_REQUEST_AGE_MS - 1), undefined)
})

test('oversized, malformed and unknown messages are refused', () => {
  assert.equal(decodePreheatMessage(envelope({ ...request, imageId: 'x'.repeat(MAX_MESSAGE_BYTES) }), NOW), undefined)
  assert.equal(decodePreheatMessage(Buffer.from('not json'), NOW), undefined)
  assert.equal(decodePreheatMessage(envelope({ ...request, kind: 'delete' }), NOW), undefined)
  assert.equal(decodePreheatMessage(envelope({ ...request, root: 'xyz' }), NOW), undefined)
  const progress = { v: 1, kind: 'progress', imageId: 'base', root: request.root, signer: key.publicKeyHex, peerId: key.peerId, state: 'pulling', heldFraction: 0.5, sizeBytes: 10, atMs: NOW }
  assert.deepEqual(decodePreheatMessage(envelope(progress), NOW), progress)
  assert.equal(decodePreheatMessage(envelope({ ...progress, heldFraction: 2 }), NOW), undefined)
  assert.equal(decodePreheatMessage(envelope({ ...progress, state: 'hacked' }), NOW), undefined)
})
