// The benchmark's trace replay client (scripts/lib/nbd-replay.ts) against a real nbdkit server: it reads
// exactly the bytes a local pread replay reads, and reports NBD errors clearly.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadTrace, distinctBytes, nbdConnect, replayNbd, replayFile, parseTrace, type TraceRead } from '../../scripts/lib/nbd-replay.js'
import { startNbdkitFile, type NbdkitServer } from '../helpers/vm.js'

const TRACE = new URL('../fixtures/debian12-boot.reads.csv', import.meta.url).pathname
let dir: string
let image: string
let server: NbdkitServer
let reads: TraceRead[]

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmt-replay-'))
  image = join(dir, 'image.raw')
  reads = await loadTrace(TRACE)
  // A sparse 1 GiB image with random bytes in the first reads' ranges, so the digests compare real data.
  await writeFile(image, Buffer.alloc(0))
  const { open } = await import('node:fs/promises')
  const fh = await open(image, 'r+')
  await fh.truncate(1024 ** 3)
  for (const r of reads.slice(0, 200)) await fh.write(randomBytes(r.length), 0, r.length, r.offset)
  await fh.close()
  server = await startNbdkitFile({ file: image, socket: join(dir, 'nbd.sock') })
}, { timeout: 60_000 })

after(async () => {
  await server?.stop()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

test('the boot trace parses: 1,006 reads, about 40.7 MiB distinct', { timeout: 10_000 }, () => {
  assert.equal(reads.length, 1006)
  assert.ok(Math.abs(distinctBytes(reads) / 2 ** 20 - 40.7) < 0.1, `${distinctBytes(reads) / 2 ** 20} MiB`)
  assert.equal(distinctBytes([{ timeMs: 0, offset: 0, length: 10 }, { timeMs: 0, offset: 5, length: 10 }, { timeMs: 0, offset: 100, length: 1 }]), 16)
  assert.throws(() => parseTrace('0,1,x\n'), { name: 'TraceFormatError' })
})

test('an NBD replay reads the same bytes as a local replay', { timeout: 60_000 }, async () => {
  const conn = await nbdConnect({ socketPath: server.socket, exportName: 'guest' })
  assert.equal(conn.sizeBytes, 1024 ** 3)
  const viaNbd = await replayNbd(reads, conn)
  await conn.close()
  const local = await replayFile(reads, image)
  assert.equal(viaNbd.reads, 1006)
  assert.equal(viaNbd.bytes, reads.reduce((s, r) => s + r.length, 0))
  assert.equal(viaNbd.digest, local.digest)
})

test('a read past the end of the export is refused with NbdClientError', { timeout: 30_000 }, async () => {
  const conn = await nbdConnect({ socketPath: server.socket })
  await assert.rejects(conn.read(1024 ** 3 - 10, 4096), { name: 'NbdClientError' })
  await conn.close()
})
