// Property-based fuzzing (fast-check) of every decoder and parser that takes bytes or JSON from outside:
// manifests, adverts, block-protocol frames, peer-exchange lists, image catalogs, boot profiles (binary and JSON), JSON-RPC
// requests, the config file, and the NBD server's negotiation and transmission phases over a real unix socket.
// Each property: no crash, a typed error (by `name`) for bad input, round trip for valid input. Inputs are
// bounded by the arbitraries; scripts/fuzz.ts prints the CPU-seconds each target took (reported, not asserted).
// test/unit/fuzz-properties.test.ts runs a quick pass; `npm run fuzz -- --runs N --seed S` runs long ones.

import fc from 'fast-check'
import { join } from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { signManifest, decodeManifest, HASH_BYTES } from '../../src/blockstack/manifest.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { encodeAdvert, decodeAdvert, summarize, MAX_ADVERT_ADDRS, type AdvertBody } from '../../src/p2p/advert.js'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { encodePeerList, decodePeerList, MAX_PEX_PEERS, MAX_PEX_ADDRS, type PeerListEntry } from '../../src/p2p/peer-exchange.js'
import { identityFromSeed } from '../../src/identity/key.js'
import { encodeCatalog, decodeCatalog, MAX_CATALOG_ENTRIES } from '../../src/p2p/catalog.js'
import {
  encodeClientFrame, decodeClientFrame, encodeServerFrame, decodeServerFrame, encodeBlocksFrame, FrameType, BlockStatus, ErrorCode,
  MAX_INDEXES_PER_GET, type ClientFrame, type BlockEntry
} from '../../src/p2p/wire.js'
import { encodeProfile, decodeProfile, finalizeProfile, MAX_PROFILE_TIME_MS } from '../../src/prefetch/profile.js'
import { profileToJson, profileFromJson, parseProfileFile } from '../../src/prefetch/profile-json.js'
import { RpcServer } from '../../src/rpc/server.js'
import { RpcErrorCode, ShuttingDownError } from '../../src/rpc/errors.js'
import { createMethods } from '../../src/daemon/methods.js'
import { parseConfigFile, mergeConfig } from '../../src/config.js'
import { createNbdServer, type NbdServer } from '../../src/blockstack/nbd/index.js'
import { silentLogger } from '../../src/blockstack/nbd/logger.js'
import { RawClient, memoryExport, ConnectionClosedError } from '../unit/nbd-helpers.js'
import { makeTempDir, removeDir } from '../helpers/daemon.js'

export class UntypedErrorFound extends Error {
  override name = 'UntypedErrorFound'
}

export interface FuzzTarget {
  name: string
  /** Runs the property `numRuns` times from `seed` (fc.assert: throws with the seed and path on failure). */
  run: (params: { numRuns: number, seed: number }) => Promise<void>
}

/** Calls `decode`; a thrown error must be one of the named classes. */
function typedOrOk (decode: () => unknown, names: readonly string[]): void {
  try {
    decode()
  } catch (err) {
    const name = (err as Error)?.name
    if (!names.includes(name)) throw new UntypedErrorFound(`untyped error ${name}: ${(err as Error)?.message}`)
  }
}

const IMAGE_ID = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/)
const BYTES = (max: number): fc.Arbitrary<Uint8Array> => fc.uint8Array({ maxLength: max })
const KEY = signingKeyFromSeed(new Uint8Array(32).fill(7))

/** Flips, truncates, extends or overwrites bytes of a valid encoding: the inputs a decoder rarely sees from random bytes. */
function mutated (valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc.tuple(valid, fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('flip', 'truncate', 'extend', 'set')).map(([bytes, at, value, how]) => {
    const out = Uint8Array.from(bytes)
    if (out.length === 0) return out
    const i = at % out.length
    if (how === 'flip') { out[i] ^= 1 << (value % 8); return out }
    if (how === 'truncate') return out.subarray(0, i)
    if (how === 'extend') { const longer = new Uint8Array(out.length + 1 + (value % 16)); longer.set(out); return longer }
    out[i] = value
    return out
  })
}

const manifestFields = fc.record({
  imageId: IMAGE_ID,
  blockShift: fc.integer({ min: 12, max: 24 }),
  blocks: fc.integer({ min: 1, max: 64 }),
  tail: fc.nat(),
  createdAtMs: fc.nat({ max: 2 ** 48 }),
  hashSeed: fc.uint8Array({ minLength: 32, maxLength: 32 })
}).map(f => {
  const blockSizeBytes = 2 ** f.blockShift
  const sizeBytes = (f.blocks - 1) * blockSizeBytes + 1 + (f.tail % blockSizeBytes)
  const blockHashes = new Uint8Array(f.blocks * HASH_BYTES)
  for (let i = 0; i < blockHashes.length; i++) blockHashes[i] = f.hashSeed[i % 32] ^ (i * 31)
  return { imageId: f.imageId, sizeBytes, blockSizeBytes, createdAtMs: f.createdAtMs, blockHashes, originPublicKey: KEY.publicKey }
})
const validManifestBytes = manifestFields.map(f => signManifest(f, KEY).encoded)
const MANIFEST_ERRORS = ['ManifestDecodeError', 'ManifestSignatureError', 'InvalidImageIdError']

const advertBody: fc.Arbitrary<AdvertBody> = fc.record({
  imageId: IMAGE_ID,
  rootHex: fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex')),
  seq: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  depth: fc.option(fc.integer({ min: 1, max: 255 }), { nil: null }),
  totalBlocks: fc.integer({ min: 1, max: 8192 }),
  heldPattern: fc.constantFrom('none', 'all', 'random', 'prefix'),
  bitmapSeed: fc.uint8Array({ minLength: 1, maxLength: 64 }),
  childCount: fc.integer({ min: 0, max: 1024 }),
  childLimit: fc.integer({ min: 0, max: 1024 }),
  uploadLoad: fc.integer({ min: 0, max: 10_000 }).map(n => n / 10_000),
  manifestAvailable: fc.boolean(),
  ports: fc.array(fc.integer({ min: 1, max: 65535 }), { maxLength: MAX_ADVERT_ADDRS }),
  profile: fc.option(fc.record({
    version: fc.uint8Array({ minLength: 8, maxLength: 8 }).map(b => Buffer.from(b).toString('hex')),
    boots: fc.integer({ min: 1, max: 255 }),
    sizeBytes: fc.integer({ min: 1, max: 1024 * 1024 })
  }), { nil: undefined }),
  // Whole seconds: the wire carries seconds.
  lifetimeS: fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined })
}).map(a => {
  const bitmap = new Uint8Array(Math.ceil(a.totalBlocks / 8))
  for (let i = 0; i < a.totalBlocks; i++) {
    const held = a.heldPattern === 'all' || (a.heldPattern === 'prefix' && i < a.totalBlocks / 3) ||
      (a.heldPattern === 'random' && (a.bitmapSeed[i % a.bitmapSeed.length] >> (i % 8) & 1) === 1)
    if (held) bitmap[i >> 3] |= 1 << (i & 7)
  }
  let heldBlocks = 0
  for (let i = 0; i < a.totalBlocks; i++) if ((bitmap[i >> 3] & (1 << (i & 7))) !== 0) heldBlocks++
  const body: AdvertBody = {
    imageId: a.imageId,
    rootHex: a.rootHex,
    seq: a.seq,
    // Depth 0 means a seed: only with every block.
    depth: heldBlocks === a.totalBlocks && a.depth === 1 ? 0 : a.depth,
    heldBlocks,
    totalBlocks: a.totalBlocks,
    childCount: Math.min(a.childCount, a.childLimit),
    childLimit: a.childLimit,
    uploadLoad: a.uploadLoad,
    manifestAvailable: a.manifestAvailable,
    summary: summarize(bitmap, a.totalBlocks),
    addrs: a.ports.map(port => multiaddr(`/ip4/127.0.0.1/tcp/${port}`).bytes)
  }
  if (a.profile !== undefined) body.profile = a.profile
  if (a.lifetimeS !== undefined) body.lifetimeMs = a.lifetimeS * 1000
  return body
}).filter(advertFits)

/** Adverts have a byte budget (MAX_ADVERT_BYTES): a body over it is the encoder's RangeError, not a decoder case. */
function advertFits (body: AdvertBody): boolean {
  try { encodeAdvert(body); return true } catch (err) { if (err instanceof RangeError) return false; throw err }
}

const clientFrame: fc.Arbitrary<ClientFrame> = fc.oneof(
  fc.record({ type: fc.constant(FrameType.Get as const), reqId: fc.nat({ max: 0xffffffff }), priority: fc.constantFrom(0 as const, 1 as const),
    root: fc.uint8Array({ minLength: 32, maxLength: 32 }), indexes: fc.array(fc.nat({ max: 0xffffffff }), { minLength: 1, maxLength: MAX_INDEXES_PER_GET }) }),
  fc.record({ type: fc.constantFrom(FrameType.Cancel as const, FrameType.Ping as const, FrameType.Channel as const), reqId: fc.nat({ max: 0xffffffff }) }),
  fc.record({ type: fc.constant(FrameType.Admit as const), reqId: fc.nat({ max: 0xffffffff }), root: fc.uint8Array({ minLength: 32, maxLength: 32 }), leave: fc.boolean() }),
  fc.record({ type: fc.constant(FrameType.Admit as const), reqId: fc.nat({ max: 0xffffffff }), root: fc.uint8Array({ minLength: 32, maxLength: 32 }), leave: fc.boolean(),
    parentCount: fc.integer({ min: 1, max: 255 }), attaching: fc.boolean() })
) as fc.Arbitrary<ClientFrame>

const channelOffer = fc.record({ port: fc.integer({ min: 1, max: 0xffff }), token: fc.uint8Array({ minLength: 16, maxLength: 16 }),
  clientKey: fc.uint8Array({ minLength: 32, maxLength: 32 }), serverKey: fc.uint8Array({ minLength: 32, maxLength: 32 }) })

const blockEntries: fc.Arbitrary<BlockEntry[]> = fc.array(fc.oneof(
  fc.record({ index: fc.nat({ max: 0xffffffff }), status: fc.constant(BlockStatus.Data), data: fc.uint8Array({ maxLength: 256 }) }),
  fc.record({ index: fc.nat({ max: 0xffffffff }), status: fc.constant(BlockStatus.NotPresent) })
), { maxLength: 16 })

const profileFields = fc.record({
  imageId: IMAGE_ID,
  rootHex: fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex')),
  blockShift: fc.integer({ min: 12, max: 24 }),
  blockCount: fc.integer({ min: 1, max: 5000 }),
  boots: fc.integer({ min: 1, max: 100 }),
  picks: fc.array(fc.record({ block: fc.nat(), tMs: fc.nat({ max: MAX_PROFILE_TIME_MS }), q: fc.integer({ min: 1, max: 255 }) }), { maxLength: 200 })
}).map(f => {
  const seen = new Set<number>()
  const entries = []
  for (const p of f.picks) {
    const block = p.block % f.blockCount
    if (seen.has(block)) continue
    seen.add(block)
    entries.push({ block, tMs: p.tMs, confidence: p.q / 255 })
  }
  return finalizeProfile({ imageId: f.imageId, rootHex: f.rootHex, blockSizeBytes: 2 ** f.blockShift, blockCount: f.blockCount, boots: f.boots, entries })
})

/** Every stable code except internal error: a -32603 from bad input means a validator crashed. */
const STABLE_CODES = new Set<number>(Object.values(RpcErrorCode).filter(c => c !== RpcErrorCode.InternalError))
const RPC_METHODS = ['image.register', 'image.list', 'image.remove', 'instance.create', 'instance.destroy', 'instance.list', 'node.status',
  'image.profile.export', 'image.profile.import', 'no.such.method', '__proto__', 'constructor', 'toString']

function rpcServer (): RpcServer {
  // Validation runs before the daemon is asked for; the daemon "is stopping", so a valid call gets 1092.
  return new RpcServer({ methods: createMethods(() => { throw new ShuttingDownError('stopping') }) })
}

function checkRpcResponse (response: unknown): void {
  const list = Array.isArray(response) ? response : response === null ? [] : [response]
  for (const r of list) {
    if (typeof r !== 'object' || r === null || (r as any).jsonrpc !== '2.0') throw new UntypedErrorFound(`not a JSON-RPC response: ${JSON.stringify(r)}`)
    const error = (r as any).error
    if (error !== undefined && !STABLE_CODES.has(error.code)) throw new UntypedErrorFound(`code ${error.code} is not a stable error code: ${error.message}`)
    JSON.stringify(r)
  }
}

const rpcRequest = fc.record({
  jsonrpc: fc.oneof(fc.constant('2.0'), fc.constant('1.0'), fc.anything()),
  id: fc.oneof(fc.integer(), fc.string({ maxLength: 8 }), fc.constant(null), fc.anything()),
  method: fc.oneof(fc.constantFrom(...RPC_METHODS), fc.string({ maxLength: 20 }), fc.anything()),
  params: fc.oneof(
    fc.record({ id: fc.oneof(IMAGE_ID, fc.string(), fc.anything()), path: fc.oneof(fc.string(), fc.anything()), name: fc.oneof(IMAGE_ID, fc.anything()), image: fc.oneof(IMAGE_ID, fc.anything()), force: fc.anything() }, { requiredKeys: [] }),
    fc.anything(), fc.constant(undefined))
}, { requiredKeys: [] })

const configFile = fc.record({
  dataDir: fc.constantFrom('/var/lib/x', 'rel/dir'),
  blockSizeBytes: fc.integer({ min: 12, max: 24 }).map(s => 2 ** s),
  nbd: fc.record({ maxConnections: fc.integer({ min: 1, max: 65536 }), tcp: fc.constantFrom(null, '127.0.0.1:10809', '[::1]:1') }, { requiredKeys: [] }),
  rpc: fc.record({ maxConnections: fc.integer({ min: 1, max: 4096 }), maxBatchLength: fc.integer({ min: 1, max: 10_000 }) }, { requiredKeys: [] }),
  images: fc.record({ allowedDirs: fc.array(fc.constantFrom('/srv/images', '/var/lib/images'), { maxLength: 3 }) }, { requiredKeys: [] }),
  p2p: fc.record({ enabled: fc.boolean(), parents: fc.integer({ min: 1, max: 16 }), heartbeatMs: fc.integer({ min: 50, max: 100_000 }) }, { requiredKeys: [] }),
  log: fc.record({ level: fc.constantFrom('debug', 'info', 'warn', 'error', 'silent') }, { requiredKeys: [] })
}, { requiredKeys: [] })

/** Peer ids to draw from (making a key per run would be most of the target's time). */
const PEER_IDS = Array.from({ length: 8 }, (_, i) => peerIdFromString(identityFromSeed(new Uint8Array(32).fill(i + 1)).peerId))
const peerList: fc.Arbitrary<PeerListEntry[]> = fc.array(fc.record({
  peerId: fc.constantFrom(...PEER_IDS),
  addrs: fc.array(fc.tuple(fc.ipV4(), fc.integer({ min: 1, max: 0xffff }), fc.boolean()).map(([ip, port, v6]) =>
    multiaddr(v6 ? `/ip6/::1/tcp/${port}` : `/ip4/${ip}/tcp/${port}`)), { maxLength: MAX_PEX_ADDRS })
}), { maxLength: MAX_PEX_PEERS })
const peerListText = (entries: PeerListEntry[]): string => JSON.stringify(entries.map(e => [e.peerId.toString(), e.addrs.map(a => a.toString())]))

const catalogEntries = fc.array(fc.record({ id: IMAGE_ID, root: fc.uint8Array({ minLength: 32, maxLength: 32 }).map(b => Buffer.from(b).toString('hex')) }), { maxLength: MAX_CATALOG_ENTRIES, size: 'max' })

const sync = (name: string, property: () => fc.IProperty<any>): FuzzTarget => ({
  name,
  run: async ({ numRuns, seed }) => { fc.assert(property(), { numRuns, seed }) }
})

export const targets: FuzzTarget[] = [
  sync('manifest round trip', () => fc.property(manifestFields, fields => {
    const manifest = signManifest(fields, KEY)
    const again = decodeManifest(manifest.encoded)
    if (again.rootHex !== manifest.rootHex || again.sizeBytes !== fields.sizeBytes || again.imageId !== fields.imageId ||
      !Buffer.from(again.blockHashes).equals(Buffer.from(fields.blockHashes))) throw new Error('manifest did not round-trip')
  })),
  sync('manifest bad bytes', () => fc.property(fc.oneof(BYTES(4096), mutated(validManifestBytes)), bytes => {
    typedOrOk(() => decodeManifest(bytes), MANIFEST_ERRORS)
  })),
  sync('advert round trip', () => fc.property(advertBody, body => {
    const again = decodeAdvert(encodeAdvert(body))
    const norm = (a: AdvertBody): string => JSON.stringify({ ...a, summary: { g: a.summary.groupBlocks, l: Buffer.from(a.summary.levels).toString('hex') }, addrs: a.addrs.map(x => Buffer.from(x).toString('hex')) })
    if (norm(again) !== norm(body)) throw new Error(`advert did not round-trip:\n${norm(body)}\n${norm(again)}`)
  })),
  sync('advert bad bytes', () => fc.property(fc.oneof(BYTES(1024), mutated(advertBody.map(encodeAdvert))), bytes => {
    typedOrOk(() => decodeAdvert(bytes), ['AdvertDecodeError'])
  })),
  sync('block protocol client frames', () => fc.property(clientFrame, frame => {
    const again = decodeClientFrame(encodeClientFrame(frame))
    const norm = (f: ClientFrame): string => JSON.stringify(f, (_k, v: unknown) => v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v)
    if (norm(again) !== norm(frame)) throw new Error('client frame did not round-trip')
  })),
  sync('block protocol server frames', () => fc.property(fc.nat({ max: 0xffffffff }), fc.boolean(), blockEntries, fc.constantFrom(ErrorCode.Busy, ErrorCode.UnknownImage, ErrorCode.BadRequest, ErrorCode.Unsupported), channelOffer, (reqId, final, entries, code, offer) => {
    const frame = decodeServerFrame(encodeBlocksFrame(reqId, final, entries), 256)
    if (frame.type !== FrameType.Blocks || frame.reqId !== reqId || frame.final !== final || frame.entries.length !== entries.length) throw new Error('BLOCKS header did not round-trip')
    frame.entries.forEach((e, i) => {
      const want = entries[i]
      const got = e.data === undefined ? undefined : Buffer.from(e.data instanceof Uint8Array ? e.data : e.data.subarray())
      if (e.index !== want.index || e.status !== want.status || (want.data !== undefined && !got?.equals(Buffer.from(want.data as Uint8Array)))) throw new Error(`entry ${i} did not round-trip`)
    })
    const err = decodeServerFrame(encodeServerFrame({ type: FrameType.Error, reqId, code }), 256)
    if (err.type !== FrameType.Error || err.code !== code || err.reqId !== reqId) throw new Error('ERROR frame did not round-trip')
    const again = decodeServerFrame(encodeServerFrame({ type: FrameType.ChannelOffer, reqId, ...offer }), 256)
    const hex = (f: object): string => JSON.stringify(f, (_k, v: unknown) => v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v)
    if (hex(again) !== hex({ type: FrameType.ChannelOffer, reqId, ...offer })) throw new Error('CHANNEL_OFFER did not round-trip')
  })),
  sync('block protocol bad frames', () => fc.property(fc.oneof(BYTES(2048), mutated(clientFrame.map(encodeClientFrame)),
    mutated(fc.tuple(fc.nat({ max: 0xffffffff }), fc.boolean(), blockEntries).map(([r, f, e]) => encodeBlocksFrame(r, f, e).subarray()))), bytes => {
    typedOrOk(() => decodeClientFrame(bytes), ['WireDecodeError'])
    typedOrOk(() => decodeServerFrame(bytes, 256), ['WireDecodeError'])
  })),
  sync('peer list round trip', () => fc.property(peerList, entries => {
    if (peerListText(decodePeerList(encodePeerList(entries))) !== peerListText(entries)) throw new Error('peer list did not round-trip')
  })),
  sync('peer list bad bytes', () => fc.property(fc.oneof(BYTES(2048), mutated(peerList.map(encodePeerList))), bytes => {
    typedOrOk(() => decodePeerList(bytes), ['PeerListDecodeError'])
  })),
  sync('image catalog round trip', () => fc.property(catalogEntries, entries => {
    if (JSON.stringify(decodeCatalog(encodeCatalog(entries))) !== JSON.stringify(entries)) throw new Error('catalog did not round-trip')
  })),
  sync('image catalog bad bytes', () => fc.property(fc.oneof(BYTES(4096), mutated(catalogEntries.map(encodeCatalog)),
    fc.jsonValue().map(v => new TextEncoder().encode(JSON.stringify(v)))), bytes => {
    typedOrOk(() => decodeCatalog(bytes), ['CatalogDecodeError'])
  })),
  sync('profile binary round trip', () => fc.property(profileFields, profile => {
    const again = decodeProfile(encodeProfile(profile))
    if (again.version !== profile.version || JSON.stringify(again.entries) !== JSON.stringify(profile.entries)) throw new Error('profile did not round-trip')
  })),
  sync('profile JSON round trip', () => fc.property(profileFields, profile => {
    const again = parseProfileFile(new TextEncoder().encode(JSON.stringify(profileToJson(profile))))
    if (again.version !== profile.version) throw new Error('profile JSON did not round-trip')
  })),
  sync('profile bad input', () => fc.property(fc.oneof(BYTES(2048), mutated(profileFields.map(encodeProfile)),
    mutated(profileFields.map(p => new TextEncoder().encode(JSON.stringify(profileToJson(p))))), fc.jsonValue().map(v => new TextEncoder().encode(JSON.stringify(v)))), bytes => {
    typedOrOk(() => parseProfileFile(bytes), ['ProfileDecodeError', 'ProfileMismatchError'])
    typedOrOk(() => decodeProfile(bytes), ['ProfileDecodeError', 'ProfileMismatchError'])
  })),
  sync('profile JSON values', () => fc.property(fc.anything(), value => {
    typedOrOk(() => profileFromJson(value), ['ProfileDecodeError', 'ProfileMismatchError'])
  })),
  sync('config file', () => fc.property(fc.oneof(configFile, fc.anything(), fc.jsonValue()), value => {
    let parsed
    try {
      parsed = parseConfigFile(value)
    } catch (err) {
      if ((err as Error).name !== 'ConfigError') throw new UntypedErrorFound(`untyped error ${(err as Error).name}: ${(err as Error).message}`)
      return
    }
    const config = mergeConfig(parsed)
    if (parsed.blockSizeBytes !== undefined && config.blockSizeBytes !== parsed.blockSizeBytes) throw new Error('blockSizeBytes lost in the merge')
    if (config.images.allowedDirs.some(d => !d.startsWith('/'))) throw new Error('a relative image dir survived')
  })),
  {
    name: 'config round trip',
    run: async ({ numRuns, seed }) => {
      fc.assert(fc.property(configFile, value => {
        const plain = JSON.parse(JSON.stringify(value))
        const parsed = parseConfigFile(plain)
        if (!isDeepStrictEqual(parsed, plain)) throw new Error(`config did not round-trip: ${JSON.stringify(value)} -> ${JSON.stringify(parsed)}`)
      }), { numRuns, seed })
    }
  },
  {
    name: 'JSON-RPC requests',
    run: async ({ numRuns, seed }) => {
      const server = rpcServer()
      await fc.assert(fc.asyncProperty(fc.oneof(
        fc.string({ maxLength: 200 }),
        rpcRequest.map(r => JSON.stringify(r) ?? 'null'),
        fc.array(rpcRequest, { maxLength: 5 }).map(r => JSON.stringify(r) ?? 'null'),
        fc.jsonValue().map(v => JSON.stringify(v) ?? 'null')
      ), async line => {
        checkRpcResponse(await server.handle(line))
      }), { numRuns, seed })
    }
  },
  {
    name: 'NBD negotiation and transmission',
    run: async ({ numRuns, seed }) => {
      const dir = await makeTempDir('vmtfz')
      const data = Buffer.alloc(256 * 1024)
      for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (i >> 9)) & 0xff
      const nbd: NbdServer = createNbdServer({
        provider: { list: () => ['disk'], get: name => name === 'disk' ? memoryExport('disk', data) : undefined },
        logger: silentLogger,
        negotiationTimeoutMs: 2000
      })
      const socket = join(dir, 'nbd.sock')
      await nbd.listenUnix(socket)
      try {
        await fc.assert(fc.asyncProperty(nbdCase, async c => await runNbdCase(socket, data, c)), { numRuns, seed })
      } finally {
        await nbd.close()
        await removeDir(dir)
      }
    }
  }
]

interface NbdCase {
  /** Raw bytes sent before (mode 'raw') or after a good handshake and GO (mode 'transmission'). */
  mode: 'raw' | 'options' | 'transmission'
  raw: Uint8Array
  options: Array<{ option: number, data: Uint8Array, declared: number | null }>
  requests: Array<{ magicOk: boolean, type: number, flags: number, offset: number, length: number }>
}

const nbdCase: fc.Arbitrary<NbdCase> = fc.record({
  mode: fc.constantFrom('raw' as const, 'options' as const, 'transmission' as const),
  raw: BYTES(256),
  options: fc.array(fc.record({ option: fc.oneof(fc.integer({ min: 0, max: 12 }), fc.nat()), data: BYTES(64), declared: fc.option(fc.nat({ max: 1 << 20 }), { nil: null }) }), { maxLength: 4 }),
  requests: fc.array(fc.record({
    magicOk: fc.integer({ min: 0, max: 9 }).map(n => n !== 0),
    type: fc.oneof(fc.constantFrom(0, 2, 3), fc.integer({ min: 0, max: 65535 })),
    flags: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 65535 })),
    offset: fc.oneof(fc.nat({ max: 256 * 1024 }), fc.nat({ max: 2 ** 40 })),
    length: fc.oneof(fc.nat({ max: 64 * 1024 }), fc.nat({ max: 0xffffffff }))
  }), { maxLength: 8 })
})

/**
 * One connection driven by the case. Every reply must be well formed; every successful read must return the
 * export's bytes. Then a fresh well-behaved client must still be served (the server survived).
 */
async function runNbdCase (socket: string, data: Buffer, c: NbdCase): Promise<void> {
  const client = await RawClient.connect(socket)
  try {
    if (c.mode === 'raw') {
      client.write(Buffer.from(c.raw))
      client.socket.end()
    } else if (c.mode === 'options') {
      await client.handshake()
      for (const o of c.options) client.sendOption(o.option, Buffer.from(o.data), o.declared ?? o.data.length)
      client.socket.end()
    } else {
      await client.open('disk')
      for (let i = 0; i < c.requests.length; i++) {
        const r = c.requests[i]
        if (r.type === 1 || r.type === 4 || r.type === 5 || r.type === 6) continue // writes, trims, zeroes: payload framing not modelled
        if (!r.magicOk) { client.write(Buffer.alloc(28, 0xab)); break }
        client.sendRequest(r.type, i, r.offset, r.length, r.flags)
        if (r.type === 2) { client.socket.end(); break }
        let reply
        try {
          reply = await client.reply(() => r.type === 0 && r.offset + r.length <= data.length ? r.length : 0)
        } catch (err) {
          if (err instanceof ConnectionClosedError) break
          throw err
        }
        if (reply.handle !== i) throw new Error(`reply for handle ${reply.handle}, expected ${i}`)
        if (reply.error === 0 && r.type === 0 && !reply.data.equals(data.subarray(r.offset, r.offset + r.length))) {
          throw new Error(`wrong bytes for a read of ${r.length} at ${r.offset}`)
        }
        if (reply.error === 0 && r.type === 0 && r.offset + r.length > data.length) throw new Error('a read past the end succeeded')
      }
    }
  } catch (err) {
    if (!(err instanceof ConnectionClosedError)) throw err
  } finally {
    client.destroy()
  }
  const probe = await RawClient.connect(socket)
  try {
    await probe.open('disk')
    probe.sendRequest(0, 7, 4096, 512)
    const reply = await probe.reply(() => 512)
    if (reply.error !== 0 || !reply.data.equals(data.subarray(4096, 4608))) throw new Error('the server no longer serves a good client')
  } finally {
    probe.destroy()
  }
}
