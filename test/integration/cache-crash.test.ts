// kill -9 during cache fill, at several points; after each restart every block marked present verifies,
// and the fill resumes from what was kept.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { writeFile, readFile } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { Level } from 'level'
import { manifestFromFile, decodeManifest, verifyBlock, isZeroBlock } from '../../src/blockstack/manifest.js'
import { signingKeyFromSeed } from '../../src/blockstack/signing.js'
import { BlockCache } from '../../src/blockstack/cache.js'
import { levelPresenceStore } from '../../src/blockstack/presence.js'
import { makeImage } from '../helpers/images.js'
import { makeTempDir, removeDir, ROOT } from '../helpers/daemon.js'

const FILLER = join(ROOT, 'test', 'helpers', 'fill-cache.ts')

/**
 * Runs the filler until it reports at least `durable` blocks durable (or finished), then SIGKILLs it: the
 * kill lands at a known amount of committed progress, whatever the machine's speed and the commit delay.
 */
async function fillAndKill (dir: string, durable: number): Promise<string> {
  const child = spawn(process.execPath, ['--import', 'tsx', FILLER, dir], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stderr.on('data', c => { err += c })
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`filler stuck: ${out} ${err}`)) }, 60_000)
    child.stdout.on('data', chunk => {
      out += chunk
      const reported = [...out.matchAll(/^verified .* durable (\d+)$/gm)].map(m => Number(m[1]))
      if (reported.length > 0 && Math.max(...reported) >= durable) child.kill('SIGKILL')
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      if (code !== 0 && signal !== 'SIGKILL') reject(new Error(`filler failed (${code}): ${err}`))
      else resolve(out)
    })
  })
}

async function verifyPresent (dir: string): Promise<{ present: number, blockCount: number }> {
  const manifest = decodeManifest(await readFile(join(dir, 'manifest')))
  const db = new Level<string, any>(join(dir, 'meta'), { valueEncoding: 'json' })
  try {
    const presence = levelPresenceStore(db.sublevel(`present-${manifest.rootHex}`, { valueEncoding: 'view' }) as any)
    const cache = await BlockCache.open({ manifest, path: join(dir, 'cache.raw'), presence, source: { async fetch () { throw new Error('no fetch in verification') } } })
    let present = 0
    for (let i = 0; i < manifest.blockCount; i++) {
      if (!cache.has(i)) continue
      present++
      if (isZeroBlock(manifest, i)) continue
      assert.ok(verifyBlock(manifest, i, await cache.readBlock(i)), `block ${i} is marked present but does not verify`)
    }
    await cache.close()
    return { present, blockCount: manifest.blockCount }
  } finally {
    await db.close()
  }
}

test('kill -9 during cache fill leaves every present block verifiable', { timeout: 180_000 }, async () => {
  const dir = await makeTempDir('vmt-crash')
  try {
    const image = join(dir, 'image.raw')
    await makeImage(image, 24 * 1024 * 1024, [[0, 24 * 1024 * 1024]])
    const manifest = await manifestFromFile({ imageId: 'crash', path: image, blockSizeBytes: 16384, key: signingKeyFromSeed(randomBytes(32)) })
    await writeFile(join(dir, 'manifest'), manifest.encoded)
    const counts: number[] = []
    // Durable blocks to wait for before each kill (of 1,536): the first kill comes at the first verified batch.
    for (const durable of [0, 1, 200, 500]) {
      await fillAndKill(dir, durable)
      const { present, blockCount } = await verifyPresent(dir)
      counts.push(present)
      assert.ok(present < blockCount)
    }
    // Durable progress only grows across crashes, and at least one kill landed in the middle of a fill.
    for (let i = 1; i < counts.length; i++) assert.ok(counts[i] >= counts[i - 1], `present counts ${counts.join(', ')}`)
    assert.ok(counts.some(c => c > 0), `present counts ${counts.join(', ')}`)
    const final = await fillAndKill(dir, Number.MAX_SAFE_INTEGER)
    assert.match(final, /done/)
    const { present, blockCount } = await verifyPresent(dir)
    assert.equal(present, blockCount)
  } finally {
    await removeDir(dir)
  }
})
