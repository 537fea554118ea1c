"""Conversions between fedprune's plain data and Flower records, shared by the client and server adapters."""
