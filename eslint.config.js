// ESLint flat config: the recommended JavaScript and typescript-eslint rules for everything we
// write (src, test, scripts, bench, examples, docs/examples); nothing for build output or the
// generated Prisma client. Not type-aware, so `npm run lint` needs no `npm run generate` first.
import js from "@eslint/js";
import { defineConfig, globalIgnores } from "eslint/config";
import tseslint from "typescript-eslint";

export default defineConfig(
  globalIgnores(["dist/", "generated/", "coverage/", "node_modules/", ".samples/", "**/*.tsbuildinfo"]),
  {
    files: ["**/*.{ts,mts,cts,js,mjs,cjs}"],
    extends: [js.configs.recommended, tseslint.configs.recommended],
    linterOptions: {
      reportUnusedDisableDirectives: "error",
    },
    rules: {
      // `_`-prefixed names mark deliberately unused parameters and destructured leftovers.
      "@typescript-eslint/no-unused-vars": [
        "error",
        { argsIgnorePattern: "^_", varsIgnorePattern: "^_", caughtErrorsIgnorePattern: "^_", ignoreRestSiblings: true },
      ],
    },
  },
  {
    // The core and the adapters take structural types and never import an ORM or a driver at
    // run time (type-only imports are fine). The exceptions, allowed below, are each adapter's
    // own library where it needs a value of it: Prisma's `Decimal` and `Prisma.defineExtension`,
    // Kysely's `CompiledQuery`, Drizzle's `sql` and `is`.
    files: ["src/**/*.ts"],
    rules: {
      "@typescript-eslint/no-restricted-imports": [
        "error",
        {
          paths: [
            { name: "pg", message: "Use the structural PgPoolLike type.", allowTypeImports: true },
            { name: "knex", message: "Use the structural KnexLike type.", allowTypeImports: true },
            { name: "typeorm", message: "Use the structural TypeormDataSourceLike type.", allowTypeImports: true },
            { name: "postgres", message: "Use the structural PostgresSqlLike type.", allowTypeImports: true },
          ],
          patterns: [
            {
              group: ["@prisma/*", "**/generated/**"],
              message: "Use the structural PrismaClientLike type; only txonce/prisma may import Prisma.",
              allowTypeImports: true,
            },
            { group: ["kysely", "kysely/*"], message: "Only txonce/kysely may import Kysely.", allowTypeImports: true },
            { group: ["drizzle-orm", "drizzle-orm/*"], message: "Only txonce/drizzle may import Drizzle.", allowTypeImports: true },
          ],
        },
      ],
    },
  },
  {
    files: ["src/adapters/prisma.ts", "src/adapters/prisma-extension.ts", "src/adapters/prisma-driver-adapter.ts", "src/adapters/kysely.ts", "src/adapters/drizzle.ts"],
    rules: { "@typescript-eslint/no-restricted-imports": "off" },
  },
  {
    // Structural types of clients we do not import (PrismaClientLike, PgPoolLike, KnexLike ...,
    // CustomType's defaults) need `any`: the real clients' signatures are generic or overloaded
    // in ways that `unknown` does not accept. Limited to the files that declare them.
    files: ["src/adapters/*.ts", "src/codec.ts"],
    rules: { "@typescript-eslint/no-explicit-any": "off" },
  },
  {
    // Tests and tooling poke at driver internals (error codes, raw rows, adapter patches).
    files: ["test/**", "scripts/**", "bench/**", "examples/**", "docs/examples/**"],
    rules: { "@typescript-eslint/no-explicit-any": "off" },
  },
);
