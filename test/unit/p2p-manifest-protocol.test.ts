// The manifest protocol over real libp2p nodes on 127.0.0.1: version 2 sends the manifest deflated (a sparse
// image's manifest several times smaller), an agent that speaks only version 1 is still understood, and a
// reply that inflates past the manifest bound, or does not inflate, is refused with a typed error.

import '../../src/polyfill.js'
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { deflateRawSync } from 'node:zlib'
import { lpStream } from '@libp2p/utils'
import { silentLogger } from '../../src/blockstack/cache.js'
import { MAX_MANIFEST_BYTES, signManifest, type Manifest } from '../../src/blockstack/manifest.js'
import { ManifestDecodeError } from '../../src/blockstack/errors.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { createNode, type P2PNode } from '../../src/p2p/node.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { MANIFEST_PROTOCOL, MANIFEST_PROTOCOL_V1, fetchManifestFrom, serveManifestStream } from '../../src/p2p/manifest-protocol.js'

const BLOCK = 65536
const BLOCKS = 4096 // 256 MiB: a 128 KiB manifest

/** A sparse image's manifest: one block in eight holds data, the rest are zero blocks. */
function sparseManifest (key: ReturnType<typeof signingKeyFromSeed>): Manifest {
  const zeroHash = createHash('sha256').update(Buffer.alloc(BLOCK)).digest()
  const hashes = Buffer.alloc(BLOCKS * 32)
  for (let i = 0; i < BLOCKS; i++) (i % 8 === 0 ? randomBytes(32) : zeroHash).copy(hashes, i * 32)
  return signManifest({ imageId: 'img', sizeBytes: BLOCKS * BLOCK, blockSizeBytes: BLOCK, createdAtMs: 1, blockHashes: hashes, originPublicKey: key.publicKey }, key)
}

async function pair (): Promise<{ server: P2PNode, client: P2PNode, close: () => Promise<void> }> {
  const server = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  const client = await createNode({ identity: identityFromSeed(randomBytes(32)), listen: ['/ip4/127.0.0.1/tcp/0'] })
  await server.start()
  await client.start()
  await client.dial(server.getMultiaddrs()[0])
  return { server, client, close: async () => { await client.stop(); await server.stop() } }
}

test('a manifest travels deflated over version 2, raw to and from a version-1 agent, and verifies either way', { timeout: 60_000 }, async () => {
  const key = signingKeyFromSeed(randomBytes(32))
  const manifest = sparseManifest(key)
  const { server, client, close } = await pair()
  try {
    const sent = new Map<string, number>()
    for (const [protocol, deflate] of [[MANIFEST_PROTOCOL, true], [MANIFEST_PROTOCOL_V1, false]] as const) {
      await server.handle(protocol, (stream, connection) => {
        const write = stream.send.bind(stream)
        // Count what goes out on the stream (length prefix included).
        stream.send = (data) => { sent.set(protocol, (sent.get(protocol) ?? 0) + data.byteLength); return write(data) }
        void serveManifestStream(stream, connection, id => id === 'img' ? manifest : undefined, silentLogger, { deflate })
      })
    }
    const got = await fetchManifestFrom(client, server.peerId, 'img', [key.publicKey], AbortSignal.timeout(20_000))
    assert.equal(got.rootHex, manifest.rootHex)
    assert.ok(Buffer.from(got.encoded).equals(Buffer.from(manifest.encoded)))
    assert.ok((sent.get(MANIFEST_PROTOCOL) ?? Infinity) < manifest.encoded.byteLength / 4, `deflated: ${sent.get(MANIFEST_PROTOCOL)} bytes of ${manifest.encoded.byteLength}`)
    assert.equal(sent.get(MANIFEST_PROTOCOL_V1), undefined, 'version 2 asked first')
    // An agent of an earlier version speaks only version 1.
    await server.unhandle(MANIFEST_PROTOCOL)
    const again = await fetchManifestFrom(client, server.peerId, 'img', [key.publicKey], AbortSignal.timeout(20_000))
    assert.equal(again.rootHex, manifest.rootHex)
    assert.ok((sent.get(MANIFEST_PROTOCOL_V1) ?? 0) > manifest.encoded.byteLength, 'raw over version 1')
  } finally {
    await close()
  }
})

test('a deflated reply that inflates past the bound, or not at all, is refused with ManifestDecodeError', { timeout: 60_000 }, async () => {
  const key = signingKeyFromSeed(randomBytes(32))
  const { server, client, close } = await pair()
  let body = Buffer.alloc(0)
  await server.handle(MANIFEST_PROTOCOL, (stream) => {
    void (async () => {
      const lp = lpStream(stream)
      await lp.read()
      await lp.write(Buffer.concat([Buffer.of(0), body]))
      await stream.close()
    })().catch(err => { stream.abort(err) })
  })
  try {
    // A bomb: a few hundred KiB that would inflate to more than any manifest may be.
    body = deflateRawSync(Buffer.alloc(MAX_MANIFEST_BYTES + 1024))
    await assert.rejects(fetchManifestFrom(client, server.peerId, 'img', [key.publicKey], AbortSignal.timeout(20_000)), ManifestDecodeError)
    body = randomBytes(1000)
    await assert.rejects(fetchManifestFrom(client, server.peerId, 'img', [key.publicKey], AbortSignal.timeout(20_000)), ManifestDecodeError)
  } finally {
    await close()
  }
})
