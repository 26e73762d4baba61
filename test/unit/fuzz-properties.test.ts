// A quick pass of every fuzz property (test/fuzz/properties.ts) on each run of the suite, from a new seed each
// time; fast-check's failure message carries the seed and path that reproduce it:
//   npm run fuzz -- --only 'NAME' --seed S --runs N

import { test } from 'node:test'
import { targets } from '../fuzz/properties.js'

const RUNS = Number(process.env.FUZZ_RUNS ?? 100)
const seed = Number(process.env.FUZZ_SEED ?? (Date.now() ^ (process.pid << 8)) >>> 0)

for (const target of targets) {
  const numRuns = target.name.startsWith('NBD') ? Math.max(1, Math.ceil(RUNS / 4)) : RUNS
  test(`fuzz: ${target.name} (${numRuns} runs, seed ${seed})`, { timeout: 120_000 }, async () => {
    await target.run({ numRuns, seed })
  })
}
