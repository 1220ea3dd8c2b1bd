"""Attribution engines: TokenLens's native exact engine and the Inseq adapter, behind one registry."""
